"""How a model draws two-object relations: in the captioned order, mirrored, on the other axis, or
with another object count.

    python tools/relation_probe.py [--model DIR] [--n 100] [--condition both|text|image] [--seed 0]

Takes the first N two-object captions of `cascade eval`'s ShapeWorld suite (the same scenes as its
two_object split for the same seed), draws each at 64 px with the default sampling settings and
reads the relation of the first captioned object to the second with the judge (and counts the
images the judge finds right in every attribute: full match). `--condition`
chooses what the decoder is given: `both` (the pipeline's default: the prior's image embedding
and the text tokens), `text` (the image embedding dropped, as in training where `image_drop`
fires) or `image` (the text dropped). A decoder that reads the relation from its text tokens
draws it right under `text`; one that cannot splits `text` between right and mirrored.

    python tools/relation_probe.py --order-gap [--model DIR] [--n 100] [--condition both|text]

measures instead, in seconds and without sampling, whether the decoder's denoising loss depends on
the relation's order at all: true renders of N two-object scenes are noised to t in each of three
ranges and denoised once with their own caption and once with the mirrored caption (the same noise,
the same t); the gap is the mirrored loss minus the true one. A decoder that reads the order from the
text has a positive gap where the layout is decided (the noisiest range); one that does not has 0.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from cascade.data import Reading, caption, judge, score
from cascade.data.shapeworld import MIRRORED_RELATION, Scene, sample_scenes
from cascade.eval.judging import SPLITS, mix_seed, quantize, render_tensor, shapeworld_items
from cascade.pipeline import CascadePipeline

OUTCOMES = ("right", "mirrored", "other axis", "count != 2")
T_RANGES = ((0.7, 1.0), (0.4, 0.7), (0.0, 0.4))  # fractions of the schedule: where the layout is decided first
GAP_REPS = 3  # noise and t draws per scene and range


def outcome(reading: Reading, scene: Scene) -> str:
    """One of OUTCOMES for the judge's reading of an image of a two-object scene (`judge(image, scene)`:
    its objects ordered as the scene's)."""
    if reading.count != 2:
        return "count != 2"
    if reading.relation == scene.relation:
        return "right"
    return "mirrored" if reading.relation == MIRRORED_RELATION[scene.relation] else "other axis"


def mirrored(scene: Scene) -> Scene:
    """The same objects with the caption's relation said the other way round (the image's mirror)."""
    return replace(scene, relation=MIRRORED_RELATION[scene.relation])


@torch.inference_mode()
def order_gap(pipe: CascadePipeline, scenes: list[Scene], condition: str, t_range: tuple[float, float], *,
              reps: int = GAP_REPS, seed: int = 0) -> tuple[float, float, float]:
    """Mean and standard error of (decoder loss with the mirrored caption − with the true caption) on
    true renders of `scenes` (at the decoder's resolution) noised to t ~ U[t_range) · T, and the share
    of positive gaps. The decoder gets the true render's CLIP image embedding unless `condition` is
    "text" (dropped); under "image" the text is dropped, so the gap is exactly 0."""
    decoder = pipe.stages["decoder"]
    n, T = len(scenes), decoder.schedule.num_timesteps
    x0 = render_tensor(scenes, decoder.config.resolution)
    image_embed = pipe.clip.encode_image(x0)
    texts = [pipe.clip.encode_text([caption(s) for s in ss]) for ss in (scenes, [mirrored(s) for s in scenes])]
    image_drop, text_drop = torch.full((n,), condition == "text"), torch.full((n,), condition == "image")
    g = torch.Generator().manual_seed(seed)
    gaps = []
    for _ in range(reps):
        t = torch.randint(int(t_range[0] * T), max(int(t_range[0] * T) + 1, int(t_range[1] * T)), (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        true_loss, mirrored_loss = (
            decoder.loss(x0, pipe._decoder_cond(image_embed, text, image_drop, text_drop), t=t, noise=noise,
                         reduce=False).float() for text in texts)
        gaps.append(mirrored_loss - true_loss)
    gap = torch.cat(gaps)
    return float(gap.mean()), float(gap.std() / len(gap) ** 0.5), float((gap > 0).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--n", type=int, default=100, help="two-object captions (the first N of the suite's two_object split)")
    ap.add_argument("--condition", choices=("both", "text", "image"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--order-gap", action="store_true", help="measure the loss gap of mirrored captions instead")
    args = ap.parse_args()
    pipe = CascadePipeline.from_pretrained(args.model, progress=False)
    if args.order_gap:
        scenes = sample_scenes(args.n, args.seed, n_objects=2)
        for lo, hi in T_RANGES:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled="decoder" in pipe.bf16):
                mean, err, positive = order_gap(pipe, scenes, args.condition, (lo, hi), seed=args.seed)
            print(f"condition {args.condition}, t in [{lo}, {hi}) T, {len(scenes)} scenes x {GAP_REPS}: "
                  f"mirrored − true loss {mean:+.5f} ± {err:.5f} (positive in {positive:.0%})")
        return
    if args.condition != "both":
        build = pipe._decoder_cond  # the decoder's condition; drop one of its parts where the pipeline keeps it

        def condition(image_embed, text, image_drop, text_drop):
            if args.condition == "text":
                image_drop = torch.ones_like(image_drop)
            else:
                text_drop = torch.ones_like(text_drop)
            return build(image_embed, text, image_drop, text_drop)

        pipe._decoder_cond = condition
    scenes = [s for split, s in shapeworld_items(max(300, 3 * args.n), args.seed) if split == SPLITS[2]][:args.n]
    counts, full = dict.fromkeys(OUTCOMES, 0), 0
    for b, start in enumerate(range(0, len(scenes), args.batch_size)):
        chunk = scenes[start:start + args.batch_size]
        out = pipe([caption(s) for s in chunk], 1, seed=mix_seed(args.seed, "relation-probe", b), final_size=64,
                   return_intermediates=True)
        for image, scene in zip(quantize(out.stages["decoder"].cpu()), chunk):
            reading = judge(image, scene)
            counts[outcome(reading, scene)] += 1
            full += score(reading, scene)["full"]
    print(f"condition {args.condition}, {len(scenes)} two-object captions: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; full match {full}")


if __name__ == "__main__":
    main()
