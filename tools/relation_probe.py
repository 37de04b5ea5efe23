"""How a model draws two-object relations: in the captioned order, mirrored, on the other axis, or
with another object count.

    python tools/relation_probe.py [--model DIR] [--n 100] [--condition both|text|image] [--seed 0]

Takes the first N two-object captions of `cascade eval`'s ShapeWorld suite (the same scenes as its
two_object split for the same seed), draws each at 64 px with the default sampling settings and
reads the relation of the first captioned object to the second with the judge. `--condition`
chooses what the decoder is given: `both` (the pipeline's default: the prior's image embedding
and the text tokens), `text` (the image embedding dropped, as in training where `image_drop`
fires) or `image` (the text dropped). A decoder that reads the relation from its text tokens
draws it right under `text`; one that cannot splits `text` between right and mirrored.
"""

from __future__ import annotations

import argparse

import torch

from cascade.data import caption, judge
from cascade.data.shapeworld import MIRRORED_RELATION
from cascade.eval.judging import SPLITS, mix_seed, quantize, shapeworld_items
from cascade.pipeline import CascadePipeline

OUTCOMES = ("right", "mirrored", "other axis", "count != 2")


def outcome(image, scene) -> str:
    """One of OUTCOMES for a generated image of a two-object scene."""
    reading = judge(image, scene)  # objects ordered as the scene's
    if reading.count != 2:
        return "count != 2"
    if reading.relation == scene.relation:
        return "right"
    return "mirrored" if reading.relation == MIRRORED_RELATION[scene.relation] else "other axis"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--n", type=int, default=100, help="two-object captions (the first N of the suite's two_object split)")
    ap.add_argument("--condition", choices=("both", "text", "image"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=25)
    args = ap.parse_args()
    pipe = CascadePipeline.from_pretrained(args.model, progress=False)
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
    counts = dict.fromkeys(OUTCOMES, 0)
    for b, start in enumerate(range(0, len(scenes), args.batch_size)):
        chunk = scenes[start:start + args.batch_size]
        out = pipe([caption(s) for s in chunk], 1, seed=mix_seed(args.seed, "relation-probe", b), final_size=64,
                   return_intermediates=True)
        for image, scene in zip(quantize(out.stages["decoder"].cpu()), chunk):
            counts[outcome(image, scene)] += 1
    print(f"condition {args.condition}, {len(scenes)} two-object captions: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
