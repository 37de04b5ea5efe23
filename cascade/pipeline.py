"""The orchestrator: text → CLIP → prior → decoder → SR-256 → SR-1024, plus variations,
interpolations and text diffs (DALL·E 2 §3). Every stage runs through one `_run_stage`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor

from .checkpoint import INDEX_NAME, CheckpointError, check_format, index_data, load_stage, read_json, save_stage, \
    write_json
from .degrade import lowres_condition
from .hardware import bf16_autocast, native_bf16
from .images import load_image, pil_to_tensor, tensor_to_pil
from .model_config import ModelConfig, load_model_config
from .slerp import slerp, slerp_noise
from .stage import ROLES, SamplingConfig, Stage, check_sampling

SIZES = {64: "decoder", 256: "sr256", 1024: "sr1024"}
DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "shapes"
# Variations' default: DALL·E 2's bipartite (z_i, x_T) representation (§3.1): DDIM at this η from the image's
# inverted x_T, unguided. On the shipped model (docs/eval/README.md, 100 sources) η = 0.25 judges 89% (two
# objects 81%), η = 0.5 77%, fresh noise (None: z_i alone) 78%; the variations of η = 0.25 lie nearer the
# source (4 two-object renders, 3 variations each: mean |variation − source| 6.0 / 255 against 12.2 from fresh
# noise; between two variations 8.3 against 12.2).
VARIATION_ETA: Optional[float] = 0.25
INVERSION_STEPS = 200  # DDIM inversion's grid (the ODE backwards needs finer steps than forwards; Stage.invert)
# The decoder's guidance on paths that start from an inverted x_T, unless asked for: the guided ODE inverts
# poorly (a two-object render came back mirrored at guidance 3; unguided, as itself: session 14).
INVERTED_GUIDANCE = 1.0


@dataclass
class CascadeOutput:
    images: list[Image.Image]  # the final images, prompt-major: prompt 0's n images, then prompt 1's …
    stages: dict[str, Tensor] = field(default_factory=dict)  # role -> (B, 3, H, W) in [-1, 1]
    text_embeds: Optional[Tensor] = None  # (B, D) normalised CLIP text embeddings
    image_embeds: Optional[Tensor] = None  # (B, D) normalised CLIP image embeddings fed to the decoder


def prior_condition(text: Any, text_drop: Tensor) -> dict[str, Any]:
    """The prior's condition from a CLIP TextEncoding (training and sampling build it here)."""
    return {"text_embed": text.embed, "text_tokens": text.tokens, "text_mask": text.mask, "text_drop": text_drop}


def decoder_condition(decoder: Stage, image_embed: Tensor, text: Any, image_drop: Tensor,
                      text_drop: Tensor) -> dict[str, Any]:
    """The decoder's condition for its `text_source` (clip: CLIP token states; own: token ids; none)."""
    source = decoder.network.config.text_source
    cond: dict[str, Any] = {"image_embed": image_embed, "image_drop": image_drop}
    if source == "clip":
        cond.update(text_embed=text.embed, text_tokens=text.tokens, text_mask=text.mask, text_drop=text_drop)
    elif source == "own":
        cond.update(text_ids=text.ids, text_mask=text.mask, text_drop=text_drop)
    return cond


def _repeat_each(cond: Mapping[str, Any], k: int) -> dict[str, Any]:
    """A condition for k draws per item: every tensor repeated k times along the batch, item-major."""
    return {key: v.repeat_interleave(k, dim=0) if isinstance(v, Tensor) else v for key, v in cond.items()}


def _closest(items: Tensor, z: Tensor, target: Tensor) -> Tensor:
    """Per row b of `items` (B, k, ...), the candidate whose embedding z[b] (k, D) is closest to target[b] (D)."""
    best = (z * target.unsqueeze(1)).sum(-1).argmax(dim=1)  # (B,)
    return items[torch.arange(items.shape[0]), best]


DEFAULT_BF16 = frozenset({"prior", "decoder", "sr256", "sr1024"})  # stages run under bf16 autocast unless told
#   otherwise, where the device has native bf16 (cascade.hardware.native_bf16): emulated bf16 is far slower than fp32.
PREPACKED = frozenset({"decoder"})  # bf16 stages run on oneDNN-prepacked weights (cascade.hardware.onednn_prepacked):
#   the decoder, ~8% per evaluation for ~0.1 s of reordering once. The prior gained ~9% but its 16 steps do not repay
#   its ~35 ms of reordering in one image; SR-256 gained ~3%, SR-1024 nothing (session 22; docs/bench.md).


class CascadePipeline:
    """CLIP + prior + 64×64 decoder + optional SR-256 and SR-1024, as one generator."""

    def __init__(self, clip: Any, stages: Mapping[str, Stage], progress: bool = True,
                 bf16: bool | Iterable[str] | None = None, channels_last: bool = True,
                 compile: bool | Iterable[str] = False):
        unknown = sorted(set(stages) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown} (known: {', '.join(ROLES)})")
        if "decoder" not in stages:
            raise ValueError("a cascade needs at least its decoder")
        self.clip = clip
        self.stages = {role: stages[role] for role in ROLES if role in stages}
        self.progress = progress
        # bf16: run these stages' networks under bf16 autocast (True: all; the sampler's arithmetic stays fp32)
        # (None: DEFAULT_BF16 on a device with native bf16, fp32 elsewhere, decided where the pipeline
        # runs. The SR stages: measured 1.75x faster text -> 1024 on an AMX CPU with outputs ~58 dB
        # from fp32 and the same judge readings, tools/compare_precision.py. The prior: 1.4-1.9x faster
        # per evaluation (docs/bench-quick.md), and its samples' cosine to the true image embedding
        # 0.9709 against 0.9710 in fp32 on 300 captions, `cascade eval --parts prior --bf16 prior`.
        # The decoder: 23.5 against 34.4 ms per evaluation (docs/bench-quick.md); text -> 64 px 1.39x
        # faster, its images 52.4 dB from fp32 and judged alike on 32 prompts,
        # `tools/compare_precision.py --bf16 decoder --size 64 --n 32`)
        self._bf16_request = None if bf16 is None else self._stage_set("bf16", bf16)
        # channels-last convolutions: the same arithmetic in another memory order, ~1.5x faster
        # fp32 UNet evaluations on this kind of CPU (docs/bench.md)
        self.channels_last = channels_last
        if channels_last:
            for stage in self.stages.values():
                stage.network.to(memory_format=torch.channels_last)
        # compile: torch.compile these stages' networks (True: all) as their samplers call them; the
        # first call of each input shape compiles (about a minute per stage on a 2-core CPU, less
        # with inductor's on-disk cache warm), later calls fuse the norms and activations around the
        # convolutions: measured in docs/bench-quick.md. The stages' own modules are unchanged
        # (weights save and load as before); stages shared with another pipeline are compiled there too.
        self.compiled = self._stage_set("compile", compile) & set(self.stages)
        for role in self.compiled:
            stage = self.stages[role]
            stage.denoiser.network = torch.compile(stage.network, dynamic=False)

    def _stage_set(self, name: str, value: bool | Iterable[str]) -> frozenset[str]:
        """True: every stage; False: none; else the named stages (known roles; absent ones are ignored)."""
        if value is True or value is False:
            return frozenset(self.stages) if value else frozenset()
        if isinstance(value, str):
            value = [value]
        roles = frozenset(value)
        unknown = sorted(roles - set(ROLES))
        if unknown:
            raise ValueError(f"{name}: unknown stage(s) {unknown} (known: {', '.join(ROLES)})")
        return roles

    # ------------------------------------------------------------------ building and I/O
    @classmethod
    def from_config(cls, config: ModelConfig | str | Path, seed: int = 0, **kw: Any) -> "CascadePipeline":
        """A randomly initialised cascade built from a config (the starting point for training)."""
        from .clip import CLIP

        if not isinstance(config, ModelConfig):
            config = load_model_config(config)
        torch.manual_seed(seed)
        clip = CLIP.from_config(config.clip)
        stages = {role: Stage(cfg) for role, cfg in config.stages.items()}
        return cls(clip, stages, **kw).eval()

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **kw: Any) -> "CascadePipeline":
        """Load a model folder (default: the model shipped in the package)."""
        from .clip import CLIP

        path = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if not path.is_dir():
            if path == DEFAULT_MODEL_DIR:
                raise CheckpointError("no default model is shipped in this installation: pass a model folder")
            raise CheckpointError(f"model folder not found: {path}")
        index = read_json(path / INDEX_NAME)
        check_format(index, path / INDEX_NAME)
        names = index.get("stages", {})
        if "clip" not in names or "decoder" not in names:
            raise CheckpointError(f"{path / INDEX_NAME}: a model needs at least 'clip' and 'decoder' stages")
        unknown = sorted(set(names) - {"clip", *ROLES})
        if unknown:
            raise CheckpointError(f"{path / INDEX_NAME}: unknown stage(s) {', '.join(unknown)}")
        clip = CLIP.from_pretrained(path / "clip")
        stages = {}
        for role in ROLES:
            if role in names:
                stages[role] = load_stage(path / role, role, expected_class=names[role])
        return cls(clip, stages, **kw).eval()

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write the model folder (weights cast to `dtype` if given, e.g. torch.float16 to ship)."""
        path = Path(path)
        self.clip.save_pretrained(path / "clip", dtype=dtype)
        for role, stage in self.stages.items():
            save_stage(stage, path / role, dtype=dtype)
        names = {"clip": "CLIP", **{role: s.config.network_class for role, s in self.stages.items()}}
        write_json(path / INDEX_NAME, index_data(names))  # last: a folder is complete once its index exists

    def to(self, device: torch.device | str) -> "CascadePipeline":
        self.clip.to(device)
        for s in self.stages.values():
            s.to(device)
        return self

    def eval(self) -> "CascadePipeline":
        self.clip.eval()
        for s in self.stages.values():
            s.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.stages["decoder"].parameters()).device

    @property
    def bf16(self) -> frozenset[str]:
        """The stages whose networks run under bf16 autocast on the current device."""
        if self._bf16_request is not None:
            return self._bf16_request
        return DEFAULT_BF16 & set(self.stages) if native_bf16(self.device) else frozenset()

    @property
    def sizes(self) -> list[int]:
        return [size for size, role in SIZES.items() if role in self.stages]

    # ------------------------------------------------------------------ checking requests
    def _sampling(self, steps: Any = None, guidance: Any = None, sampler: Any = None,
                  stage_options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> dict[str, SamplingConfig]:
        """Per-stage sampling settings from the defaults and the overrides, all checked up front.

        `steps`, `guidance`, `sampler` are each a value for every stage or a {role: value} dict
        (a single guidance scale applies to the prior and the decoder: SR stages are not guided).
        """
        per_role: dict[str, dict[str, Any]] = {role: {} for role in self.stages}
        for name, value in (("steps", steps), ("guidance", guidance), ("sampler", sampler)):
            if value is None:
                continue
            if isinstance(value, Mapping):
                items = value.items()
            else:  # one value for every stage; one guidance scale means the guided stages
                items = ((r, value) for r in self.stages if not (name == "guidance" and r.startswith("sr")))
            for role, v in items:
                if role not in self.stages:
                    raise ValueError(f"{name}: this model has no stage {role!r} (stages: {', '.join(self.stages)})")
                if v is not None:
                    per_role[role][name] = v
        for role, opts in (stage_options or {}).items():
            if role not in self.stages:
                raise ValueError(f"stage_options: this model has no stage {role!r} (stages: {', '.join(self.stages)})")
            per_role[role].update(opts)
        out = {}
        for role, changes in per_role.items():
            default = self.stages[role].config.sampling
            unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(SamplingConfig)})
            if unknown:
                raise ValueError(f"{role}: unknown sampling option(s) {', '.join(unknown)}")
            merged = {**dataclasses.asdict(default), **changes}
            try:
                check_sampling(merged["sampler"], merged["steps"], merged["guidance"])
            except ValueError as e:
                raise ValueError(f"{role}: {e}") from None
            try:
                out[role] = SamplingConfig(**merged)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{role}: {e}") from e
            if role.startswith("sr") and out[role].guidance != 1.0:
                raise ValueError(f"{role}: super-resolution stages are not guided (guidance must be 1)")
            if role.startswith("sr") and out[role].candidates != 1:
                raise ValueError(f"{role}: super-resolution stages draw one image (candidates must be 1)")
        return out

    def set_sampling_defaults(self, stage_options: Mapping[str, Mapping[str, Any]]) -> "CascadePipeline":
        """Make these per-stage sampling options the defaults of every later call, e.g.
        `pipe.set_sampling_defaults({"decoder": {"candidates": 2, "steps": 25}})`; checked first."""
        checked = self._sampling(stage_options=stage_options)
        for role in stage_options:
            stage = self.stages[role]
            stage.config = dataclasses.replace(stage.config, sampling=checked[role])
        return self

    def _final_role(self, final_size: Optional[int]) -> str:
        if final_size is None:
            return [r for r in ("sr1024", "sr256", "decoder") if r in self.stages][0]
        if final_size not in SIZES:
            raise ValueError(f"final_size must be one of 64, 256, 1024, got {final_size!r}")
        role = SIZES[final_size]
        if role not in self.stages:
            raise ValueError(f"this model has no {role} stage, so it cannot make {final_size}×{final_size} images")
        return role

    @staticmethod
    def _generator(generator: Optional[torch.Generator], seed: Optional[int]) -> torch.Generator:
        if generator is not None:
            return generator
        g = torch.Generator()
        if seed is None:
            g.seed()
        else:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            g.manual_seed(seed)
        return g

    @staticmethod
    def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
        if isinstance(prompts, str):
            return [prompts]
        if not isinstance(prompts, Sequence) or len(prompts) == 0:
            raise TypeError(f"prompts must be a string or a non-empty list of strings, got {type(prompts).__name__}")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i} is {type(p).__name__}, not text: {p!r}")
        return list(prompts)

    @staticmethod
    def _check_count(n: Any, name: str) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
        return n

    # ------------------------------------------------------------------ conditions
    def _encode_text(self, prompts: list[str]):
        with torch.inference_mode():
            return self.clip.encode_text(prompts)

    def _prior_cond(self, text, drop: Tensor) -> dict[str, Any]:
        return prior_condition(text, drop)

    def _decoder_cond(self, image_embed: Tensor, text, image_drop: Tensor, text_drop: Tensor) -> dict[str, Any]:
        return decoder_condition(self.stages["decoder"], image_embed, text, image_drop, text_drop)

    # ------------------------------------------------------------------ stages
    def _run_stage(self, role: str, shape: tuple[int, ...], cond: Mapping[str, Any], uncond: Optional[Mapping[str, Any]],
                   sampling: SamplingConfig, generator: torch.Generator, noise: Optional[Tensor] = None) -> Tensor:
        stage = self.stages[role]
        if noise is None:
            noise = torch.randn(shape, generator=generator)
        if self.channels_last and noise.dim() == 4:
            noise = noise.contiguous(memory_format=torch.channels_last)
        with bf16_autocast(self.device.type, stage.network, role in self.bf16, role not in self.compiled,
                           prepack=role in PREPACKED):
            return stage.sample(shape, cond, uncond, generator=generator, noise=noise.to(self.device),
                                sampling=sampling, progress=self.progress).float()

    def _prior(self, text, drop: Tensor, sampling: SamplingConfig, generator: torch.Generator) -> Tensor:
        """CLIP image embeddings (B, D), normalised; the best of `candidates` draws per text."""
        k = sampling.candidates
        B, D = text.embed.shape
        cond = _repeat_each(self._prior_cond(text, drop), k)
        uncond = {**cond, "text_drop": torch.ones_like(cond["text_drop"])}
        z = self._run_stage("prior", (B * k, D), cond, uncond, sampling, generator)
        z = self.stages["prior"].data_to_embed(z).view(B, k, D)
        return _closest(z, z, text.embed.float())

    def _decode(self, image_embed: Tensor, text, text_drop: Tensor, options: Mapping[str, SamplingConfig],
                final_role: str, generator: torch.Generator, shared_noise: bool = False,
                noise: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Decoder then super-resolution up to `final_role`; returns every stage's output. `noise`:
        the decoder's x_T (B, 3, res, res), e.g. an inverted image's, instead of fresh noise (with
        `shared_noise`, then only the SR stages share theirs)."""
        B = image_embed.shape[0]
        dec = self.stages["decoder"]
        res = dec.config.resolution
        cond = self._decoder_cond(image_embed, text, torch.zeros(B, dtype=torch.bool), text_drop)
        uncond = self._decoder_cond(image_embed, text, torch.ones(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool))
        if shared_noise and noise is None:
            noise = torch.randn((1, 3, res, res), generator=generator).expand(B, -1, -1, -1).contiguous()
        if shared_noise or options["decoder"].candidates == 1:
            x = self._run_stage("decoder", (B, 3, res, res), cond, uncond, options["decoder"], generator, noise)
        else:
            x = self._best_of_candidates(cond, uncond, text, text_drop, image_embed, options["decoder"], generator,
                                         noise)
        x = x.clamp(-1, 1)
        outputs = {"decoder": x}
        for role in ("sr256", "sr1024"):
            if final_role == "decoder" or (role == "sr1024" and final_role == "sr256"):
                break
            stage = self.stages[role]
            aug = torch.full((B,), options[role].aug_level)
            lowres = lowres_condition(x, stage.config.resolution, aug, stage.config.augmentation, generator=generator)
            shape = (B, 3, stage.config.resolution, stage.config.resolution)
            noise = None
            if shared_noise:
                noise = torch.randn((1,) + shape[1:], generator=generator).expand(B, -1, -1, -1).contiguous()
            x = self._run_stage(role, shape, {"lowres": lowres, "aug_level": aug.to(x.device)}, None,
                                options[role], generator, noise).clamp(-1, 1)
            outputs[role] = x
        return outputs

    def _best_of_candidates(self, cond: Mapping[str, Any], uncond: Mapping[str, Any], text, text_drop: Tensor,
                            image_embed: Tensor, sampling: SamplingConfig, generator: torch.Generator,
                            noise: Optional[Tensor] = None) -> Tensor:
        """Decode `candidates` images per condition and keep, for each, the one whose CLIP image
        embedding is closest to its text embedding (to `image_embed` where the text is dropped).
        `noise` (B, ...): each condition's x_T, shared by its candidates."""
        k = sampling.candidates
        B = image_embed.shape[0]
        res = self.stages["decoder"].config.resolution
        if noise is not None:
            noise = noise.repeat_interleave(k, dim=0)
        x = self._run_stage("decoder", (B * k, 3, res, res), _repeat_each(cond, k), _repeat_each(uncond, k),
                            sampling, generator, noise)
        z = self.clip.encode_image(x.clamp(-1, 1)).float().view(B, k, -1)
        target = torch.where(text_drop.view(B, 1).to(z.device), image_embed.float(), text.embed.float())
        return _closest(x.view(B, k, *x.shape[1:]), z, target)

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def __call__(
        self,
        prompts: str | Sequence[str],
        num_images_per_prompt: int = 1,
        *,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        steps: Any = None,
        guidance: Any = None,
        sampler: Any = None,
        stage_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
        final_size: Optional[int] = None,
        return_intermediates: bool = False,
    ) -> list[Image.Image] | CascadeOutput:
        """Text to images. An empty prompt is unconditional. `steps`, `guidance`, `sampler`: one
        value for all stages or a {role: value} dict; `stage_options` sets any SamplingConfig field."""
        prompts = self._check_prompts(prompts)
        n = self._check_count(num_images_per_prompt, "num_images_per_prompt")
        if "prior" not in self.stages:
            raise ValueError("this model has no prior, so it cannot generate from text (use variations)")
        options = self._sampling(steps, guidance, sampler, stage_options)
        final_role = self._final_role(final_size)
        g = self._generator(generator, seed)
        expanded = [p for p in prompts for _ in range(n)]
        text = self._encode_text(expanded)
        drop = torch.tensor([p.strip() == "" for p in expanded], device=text.embed.device)
        image_embed = self._prior(text, drop, options["prior"], g)
        outputs = self._decode(image_embed, text, drop, options, final_role, g)
        return self._finish(outputs, final_role, return_intermediates, text.embed, image_embed)

    def _finish(self, outputs, final_role, return_intermediates, text_embeds, image_embeds):
        images = tensor_to_pil(outputs[final_role])
        if not return_intermediates:
            return images
        return CascadeOutput(images, outputs, text_embeds, image_embeds)

    def _empty_text(self, B: int):
        text = self._encode_text([""] * B)
        return text, torch.ones(B, dtype=torch.bool, device=text.embed.device)

    def encode_images(self, images: Sequence[str | Path | Image.Image] | str | Path | Image.Image) -> Tensor:
        """Normalised CLIP image embeddings (B, D) of image files or PIL images of any mode."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        pil = [load_image(im) for im in images]
        with torch.inference_mode():
            return self.clip.encode_image(pil).float()

    @torch.inference_mode()
    def variations(self, image: str | Path | Image.Image, n: int = 4, *, eta: Optional[float] = VARIATION_ETA,
                   generator: Optional[torch.Generator] = None,
                   seed: Optional[int] = None, steps: Any = None, guidance: Any = None, sampler: Any = None,
                   stage_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   final_size: Optional[int] = None, return_intermediates: bool = False):
        """n new images that keep the content of `image`, decoded from its CLIP image embedding z_i
        (with decoder candidates, each the one closest to z_i).

        `eta` (default VARIATION_ETA = 0.25): from DALL·E 2's bipartite representation (z_i, x_T) (§3.1):
        the image is also inverted with DDIM (on a 200-step grid) to the decoder's x_T, and each
        variation is drawn by DDIM from that x_T with this η: 0 redraws the image itself, larger values
        vary it more; it samples the decoder unguided unless `guidance` says otherwise (INVERTED_GUIDANCE):
        unguided, an inverted ShapeWorld render comes back to a mean error of 5 / 255, under guidance 3
        now and then as other objects. `eta=None`: from fresh noise with the decoder's own sampler (z_i alone)."""
        n = self._check_count(n, "n")
        options = self._variation_sampling(eta, steps, guidance, sampler, stage_options)
        final_role = self._final_role(final_size)
        source = load_image(image)
        image_embed = self.encode_images(source)
        g = self._generator(generator, seed)
        noise = None if eta is None else self._invert([source], image_embed, options["decoder"]).expand(n, -1, -1, -1)
        image_embed = image_embed.repeat(n, 1)
        text, drop = self._empty_text(n)
        outputs = self._decode(image_embed, text, drop, options, final_role, g, noise=noise)
        return self._finish(outputs, final_role, return_intermediates, None, image_embed)

    def _variation_sampling(self, eta: Optional[float], steps: Any, guidance: Any, sampler: Any,
                            stage_options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> dict[str, SamplingConfig]:
        """Each stage's sampling for variations: with `eta`, the decoder samples by DDIM at that η."""
        if eta is not None and (isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0):
            raise ValueError(f"eta must be a number at least 0 (or None: fresh noise), got {eta!r}")
        options = self._sampling(steps, guidance, sampler, stage_options)
        if eta is not None:
            self._ddim_from_inverted(options, sampler, guidance, eta, "pass eta=None to use another sampler")
        return options

    @staticmethod
    def _ddim_from_inverted(options: dict[str, SamplingConfig], sampler: Any, guidance: Any, eta: float,
                            other: str) -> None:
        """Set the decoder to sample by DDIM at `eta` (from an inverted image's x_T), at INVERTED_GUIDANCE
        unless a guidance was asked for; refuse another sampler asked for by name. At η = 0 every
        candidate would be the same deterministic draw: draw one."""
        asked = sampler if isinstance(sampler, str) else (sampler or {}).get("decoder")
        if asked is not None and asked != "ddim":
            raise ValueError(f"decoding from an inverted image's x_T samples the decoder with ddim, not {asked}; {other}")
        asked_guidance = guidance if isinstance(guidance, (int, float)) else (guidance or {}).get("decoder")
        candidates = options["decoder"].candidates if eta > 0 else 1
        options["decoder"] = dataclasses.replace(
            options["decoder"], sampler="ddim", eta=float(eta), candidates=candidates,
            guidance=options["decoder"].guidance if asked_guidance is not None else INVERTED_GUIDANCE)

    def _invert(self, images: Sequence[Image.Image], image_embed: Tensor, sampling: SamplingConfig) -> Tensor:
        """The decoder's x_T (B, 3, res, res) of each image for the condition (its z_i, no text): DDIM inversion."""
        dec = self.stages["decoder"]
        x0 = torch.stack([pil_to_tensor(im, dec.config.resolution) for im in images])
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        B = len(images)
        text, drop = self._empty_text(B)
        cond = self._decoder_cond(image_embed, text, torch.zeros(B, dtype=torch.bool), drop)
        uncond = self._decoder_cond(image_embed, text, torch.ones(B, dtype=torch.bool), drop)
        with bf16_autocast(self.device.type, dec.network, "decoder" in self.bf16, "decoder" not in self.compiled,
                          prepack="decoder" in PREPACKED):
            return dec.invert(x0.to(self.device), cond, uncond, sampling=sampling,
                              steps=max(INVERSION_STEPS, sampling.steps), progress=self.progress).float().cpu()

    def _embedding_of(self, item: str | Path | Image.Image, options, g: torch.Generator) -> Tensor:
        """An image's CLIP embedding, or for text (a str that is not an existing file) the prior's."""
        if isinstance(item, str) and not Path(item).is_file():
            if "prior" not in self.stages:
                raise ValueError("text endpoints need a prior, and this model has none")
            text = self._encode_text([item])
            drop = torch.tensor([item.strip() == ""], device=text.embed.device)
            return self._prior(text, drop, options["prior"], g)
        return self.encode_images(item)

    @torch.inference_mode()
    def interpolate(self, a: str | Path | Image.Image, b: str | Path | Image.Image, n_frames: int = 8, *,
                    invert: bool = False,
                    generator: Optional[torch.Generator] = None, seed: Optional[int] = None, steps: Any = None,
                    guidance: Any = None, sampler: Any = None,
                    stage_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    final_size: Optional[int] = None, return_intermediates: bool = False):
        """Frames along the slerp between two CLIP image embeddings (images, or texts through the
        prior), decoded with shared noise and a deterministic sampler so that neighbouring frames
        change smoothly (a stage whose default sampler is ddpm uses DDIM with η = 0 here; frames
        draw one decoder image each, whatever its candidates).

        `invert=True` (two images): DALL·E 2 §3.2's other way: each image is DDIM-inverted to its
        decoder x_T (under its own z_i, on a 200-step grid), and the frames' x_T move along the slerp
        between the two as their embeddings do, so the first and last frames redraw the images
        themselves (each equal to its `variations(..., eta=0)`) rather than new drawings of them."""
        n_frames = self._check_count(n_frames, "n_frames")
        if n_frames < 2:
            raise ValueError(f"n_frames must be at least 2, got {n_frames}")
        if invert and any(isinstance(x, str) and not Path(x).is_file() for x in (a, b)):
            raise ValueError("interpolate(invert=True) needs two images (a text has no x_T to invert)")
        options = self._sampling(steps, guidance, sampler, stage_options)
        asked = set(self.stages) if isinstance(sampler, str) else set(sampler or ())
        for role, o in options.items():
            if role == "prior" or o.sampler not in ("ddpm", "ddim"):
                continue
            if o.sampler == "ddpm" and role in asked:
                raise ValueError(f"{role}: interpolation needs a deterministic sampler (ddim, dpmpp_2m, heun), not ddpm")
            # a stage whose default is ddpm decodes frames with DDIM (η = 0), its deterministic counterpart
            options[role] = dataclasses.replace(o, sampler="ddim", eta=0.0)
        if invert:
            self._ddim_from_inverted(options, sampler, guidance, 0.0,
                                     "interpolate with invert=False to use another sampler")
        final_role = self._final_role(final_size)
        g = self._generator(generator, seed)
        za, zb = self._embedding_of(a, options, g), self._embedding_of(b, options, g)
        fracs = torch.linspace(0, 1, n_frames)
        image_embed = slerp(za.expand(n_frames, -1), zb.expand(n_frames, -1), fracs)
        noise = None
        if invert:
            x_t = self._invert([load_image(a), load_image(b)], torch.cat([za, zb]), options["decoder"])
            noise = slerp_noise(x_t[:1], x_t[1:], fracs)
        text, drop = self._empty_text(n_frames)
        outputs = self._decode(image_embed, text, drop, options, final_role, g, shared_noise=True, noise=noise)
        return self._finish(outputs, final_role, return_intermediates, None, image_embed)

    @torch.inference_mode()
    def text_diff(self, image: str | Path | Image.Image, from_text: str, to_text: str,
                  amount: float | Sequence[float] = 0.5, *, invert: bool = False,
                  generator: Optional[torch.Generator] = None,
                  seed: Optional[int] = None, steps: Any = None, guidance: Any = None, sampler: Any = None,
                  stage_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  final_size: Optional[int] = None, return_intermediates: bool = False):
        """Edit an image by the text diff z_d = norm(z_t(to) − z_t(from)): decode slerp(z_i, z_d, amount)
        (DALL·E 2 §3.3); a list of amounts gives one image each, with shared noise (one decoder draw each).
        `invert=True`: as in the paper, the shared decoder noise is the image's DDIM-inverted x_T and the
        decoder samples by DDIM (η = 0), so amount 0 redraws the image itself and the edits keep its layout."""
        for name, t in (("from_text", from_text), ("to_text", to_text)):
            if not isinstance(t, str):
                raise TypeError(f"{name} must be text, got {type(t).__name__}")
        amounts = [amount] if isinstance(amount, (int, float)) else list(amount)
        if not amounts or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1 for a in amounts):
            raise ValueError(f"amount must be a number or numbers in [0, 1], got {amount!r}")
        options = self._sampling(steps, guidance, sampler, stage_options)
        if invert:
            self._ddim_from_inverted(options, sampler, guidance, 0.0,
                                     "text_diff with invert=False to use another sampler")
        final_role = self._final_role(final_size)
        g = self._generator(generator, seed)
        source = load_image(image)
        z_i = self.encode_images(source)
        texts = self._encode_text([from_text, to_text])
        diff = torch.nn.functional.normalize(texts.embed[1:] - texts.embed[:1], dim=-1).float()
        if not torch.isfinite(diff).all() or (texts.embed[1] - texts.embed[0]).abs().max() == 0:
            raise ValueError("from_text and to_text have the same CLIP embedding: there is no direction to move in")
        m = len(amounts)
        image_embed = slerp(z_i.expand(m, -1), diff.expand(m, -1), torch.tensor(amounts, dtype=torch.float32))
        noise = self._invert([source], z_i, options["decoder"]).expand(m, -1, -1, -1) if invert else None
        text, drop = self._empty_text(m)
        outputs = self._decode(image_embed, text, drop, options, final_role, g, shared_noise=True, noise=noise)
        return self._finish(outputs, final_role, return_intermediates, None, image_embed)
