"""What training one stage means: a sample → (x0, condition), the loss module, the sample grid, the export.

Conditions are built by the functions the pipeline samples with (`prior_condition`,
`decoder_condition`, `Stage.embed_to_data`, and `lowres_condition` for the super-resolution
stages), so a network is trained on exactly the dicts it is sampled with. Per-sample randomness (t, noise,
condition drops, crops, augmentation) is drawn in `fetch` from the sample's own generator
(see cascade.train.data), so it does not depend on the process layout or on resuming.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import INDEX_NAME, read_json, save_stage, write_json
from ..clip import TextEncoding
from ..degrade import lowres_condition, upsample
from ..images import grid, tensor_to_pil
from ..pipeline import CascadePipeline, decoder_condition, prior_condition
from ..stage import Stage
from .config import TrainConfig
from .data import (EmbeddingCache, ShapeWorldSource, Source, _uint8_to_float, embedding_file_cache, encode_captions,
                   encode_items)


def _text(batch: dict[str, Tensor]) -> TextEncoding:
    return TextEncoding(batch["text_embed"], batch["text_tokens"], batch["text_mask"], batch["text_ids"])


def _bernoulli(p: float, g: torch.Generator) -> Tensor:
    return torch.rand((), generator=g) < p


class DiffusionLoss(nn.Module):
    """Stage.loss as a module's forward, so that accelerate/DDP see (and all-reduce) its gradients."""

    def __init__(self, stage: Stage, min_snr_gamma: Optional[float], teacher: Optional[Stage] = None,
                 teacher_weight: float = 1.0, teacher_guidance: Optional[float] = None):
        super().__init__()
        self.stage = stage
        self.min_snr_gamma = min_snr_gamma
        self._teacher = [teacher] if teacher is not None else []  # in a list: not a submodule (DDP, checkpoints)
        self.teacher_weight = teacher_weight
        self.teacher_guidance = teacher_guidance

    @property
    def network(self) -> nn.Module:
        return self.stage.network

    def forward(self, x0: Tensor, cond: dict[str, Any], t: Tensor, noise: Tensor,
                uncond: Optional[dict[str, Any]] = None) -> Tensor:
        teacher = self._teacher[0].denoiser if self._teacher else None
        return self.stage.loss(x0, cond, t=t, noise=noise, min_snr_gamma=self.min_snr_gamma, teacher=teacher,
                               teacher_weight=self.teacher_weight, uncond=uncond, guidance=self.teacher_guidance or 0.0)


class Task:
    """One stage's training: subclasses fill in the per-sample fetch, the batch preparation and the grid."""

    role: str

    def __init__(self, train: TrainConfig, clip: Any, source: Source, eval_source: Source):
        self.train = train
        self.clip = clip
        self.source = source
        self.eval_source = eval_source
        self.cache: Optional[EmbeddingCache] = None

    needs_cache = False

    def sizes(self) -> list[int]:
        """Image sizes the training source must provide."""
        return []

    def fetch(self, index: int, g: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, batch: dict[str, Any]) -> tuple:
        """The loss module's positional arguments for a collated batch."""
        raise NotImplementedError

    def build_module(self) -> nn.Module:
        raise NotImplementedError

    def evaluate(self, network: nn.Module, out_dir: Path, step: int) -> dict[str, float]:
        raise NotImplementedError

    def setup(self, fresh: bool) -> None:
        """Called once the embedding cache is ready, before the loss module is built (`fresh`: not resuming)."""

    def after_step(self, module: nn.Module) -> None:
        """Called after each optimizer step (all processes)."""

    def export(self, network: nn.Module, model_dir: Path) -> None:
        raise NotImplementedError


class StageTask(Task):
    """Prior, decoder and super-resolution: a diffusion Stage."""

    def __init__(self, stage: Stage, train: TrainConfig, clip: Any, source: Source, eval_source: Source):
        super().__init__(train, clip, source, eval_source)
        self.role = stage.role
        self.stage = stage
        self.config = stage.config
        self.T = stage.schedule.num_timesteps

    teacher: Optional[Stage] = None  # set by the trainer from train.teacher

    def build_module(self) -> nn.Module:
        return DiffusionLoss(self.stage, self.train.loss_min_snr_gamma, self.teacher, self.train.teacher_weight,
                             self.train.teacher_guidance)

    def _diffusion(self, shape: tuple[int, ...], g: torch.Generator) -> dict[str, Tensor]:
        low = 0
        if self.train.high_noise_share > 0 and torch.rand((), generator=g) < self.train.high_noise_share:
            low = int(self.train.high_noise_from * self.T)
        return {"t": torch.randint(low, self.T, (), generator=g), "noise": torch.randn(shape, generator=g)}

    def _images_in(self, *xs: Tensor) -> tuple[Tensor, ...]:
        if self.train.channels_last:
            return tuple(x.contiguous(memory_format=torch.channels_last) for x in xs)
        return xs

    def ema_stage(self, network: nn.Module) -> Stage:
        """A Stage holding `network`'s weights (the EMA), for sampling and export (built once, then refilled)."""
        if getattr(self, "_ema_stage", None) is None:
            self._ema_stage = Stage(self.config).eval()
        self._ema_stage.network.load_state_dict(network.state_dict())
        return self._ema_stage

    def export(self, network: nn.Module, model_dir: Path) -> None:
        stage = self.ema_stage(network)
        save_stage(stage, model_dir / self.role)
        index = read_json(model_dir / INDEX_NAME)
        if index.get("stages", {}).get(self.role) != self.config.network_class:
            index.setdefault("stages", {})[self.role] = self.config.network_class
            write_json(model_dir / INDEX_NAME, index)

    def _eval_embeddings(self, k: int) -> tuple[Tensor, TextEncoding, list[str]]:
        captions = [self.eval_source.caption(i) for i in range(k)]
        with torch.no_grad():
            z_i = encode_items(self.clip, self.eval_source, range(k))
            text = self.clip.encode_text(captions)
        return z_i, text, captions


class PriorTask(StageTask):
    """x0 = Stage.embed_to_data(z_i) (z_i · data_scale, or Karlo's standardisation); cond = the caption's
    CLIP text (dropped with text_drop_prob)."""

    needs_cache = True

    def setup(self, fresh: bool) -> None:
        """Karlo-style priors (clip_stats) normalise by the embedding statistics: set them from the
        training pool when the network still has its initial ones."""
        net = self.stage.network
        width = self.cache.image_embed.shape[1]
        if width != self.clip.embed_dim or width != net.config.embed_dim:
            raise ValueError(f"the embeddings are {width}-wide, but the CLIP makes {self.clip.embed_dim} and the "
                             f"prior takes {net.config.embed_dim}")
        if fresh and getattr(net.config, "clip_stats", False):
            if bool((net.clip_mean == 0).all() and (net.clip_std == 1).all()):
                z = F.normalize(self.cache.image_embed.float(), dim=-1)
                net.clip_mean.copy_(z.mean(0, keepdim=True))
                net.clip_std.copy_(z.std(0, keepdim=True).clamp(min=1e-6))

    def fetch(self, index: int, g: torch.Generator) -> dict[str, Any]:
        z_i = F.normalize(self.cache.image_embed[index].float(), dim=-1)
        with torch.no_grad():
            x0 = self.stage.embed_to_data(z_i[None])[0]  # exactly what the pipeline's _prior inverts
        return {"x0": x0, **self._diffusion(x0.shape, g), "text_drop": _bernoulli(self.train.text_drop_prob, g),
                **self.cache.text(index)}

    def prepare(self, batch: dict[str, Any]) -> tuple:
        cond = prior_condition(_text(batch), batch["text_drop"])
        if self.train.teacher_guidance is None:
            return batch["x0"], cond, batch["t"], batch["noise"]
        uncond = {**cond, "text_drop": torch.ones_like(cond["text_drop"])}  # as the pipeline's _prior makes it
        return batch["x0"], cond, batch["t"], batch["noise"], uncond

    @torch.no_grad()
    def evaluate(self, network: nn.Module, out_dir: Path, step: int) -> dict[str, float]:
        """Cosine of sampled to true image embeddings on the held-out captions (and reference levels)."""
        k = min(self.train.eval_size, len(self.eval_source))
        stage = self.ema_stage(network)
        cache = embedding_file_cache(self.eval_source)
        if cache is None:
            z_i, text, _ = self._eval_embeddings(k)
        else:  # pre-computed embeddings: no images to encode
            rows = [cache.text(i) for i in range(k)]
            z_i = cache.image_embed[:k].float()
            text = TextEncoding(*(torch.stack([r[key] for r in rows]) for key in EmbeddingCache.TEXT_KEYS))
        drop = torch.zeros(k, dtype=torch.bool)
        cond = prior_condition(text, drop)
        uncond = {**cond, "text_drop": torch.ones_like(drop)}
        g = torch.Generator().manual_seed(self.train.seed)
        z = stage.data_to_embed(stage.sample((k, z_i.shape[1]), cond, uncond, generator=g))
        z_i, z_t = F.normalize(z_i.float(), dim=-1), F.normalize(text.embed.float(), dim=-1)
        off = ~torch.eye(k, dtype=torch.bool)
        metrics = {
            "prior/cosine_to_image": float((z * z_i).sum(-1).mean()),  # the number to watch: → 1
            "prior/cosine_to_text": float((z * z_t).sum(-1).mean()),
            "prior/true_image_text_cosine": float((z_i * z_t).sum(-1).mean()),  # what a perfect prior gets above
            "prior/unrelated_image_cosine": float((z_i @ z_i.T)[off].mean()) if k > 1 else 0.0,  # chance level
        }
        write_json(out_dir / f"{self.role}-step-{step:08d}.json", metrics)
        return metrics


class DecoderTask(StageTask):
    """x0 = the image at the decoder's resolution; cond = its CLIP image embedding and caption
    (image dropped with image_drop_prob, text with decoder_text_drop_prob), per text_source."""

    needs_cache = True

    def sizes(self) -> list[int]:
        return [self.config.resolution]

    def fetch(self, index: int, g: torch.Generator) -> dict[str, Any]:
        x0 = self.source.image(index, self.config.resolution)
        return {"x0": x0, **self._diffusion(x0.shape, g),
                "image_drop": _bernoulli(self.train.image_drop_prob, g),
                "text_drop": _bernoulli(self.train.decoder_text_drop_prob, g),
                "image_embed": self.cache.image_embed[index].float(), **self.cache.text(index)}

    def prepare(self, batch: dict[str, Any]) -> tuple:
        cond = decoder_condition(self.stage, batch["image_embed"], _text(batch), batch["image_drop"],
                                             batch["text_drop"])
        x0, noise = self._images_in(batch["x0"], batch["noise"])
        if self.train.teacher_guidance is None:
            return x0, cond, batch["t"], noise
        every = torch.ones_like(batch["image_drop"])  # the pipeline's unconditional: no image, no text
        uncond = decoder_condition(self.stage, batch["image_embed"], _text(batch), every, every)
        return x0, cond, batch["t"], noise, uncond

    @torch.no_grad()
    def evaluate(self, network: nn.Module, out_dir: Path, step: int) -> dict[str, float]:
        """Held-out images (top row) and decoder samples from their CLIP embedding and caption (bottom)."""
        k = min(self.train.sample_count, len(self.eval_source))
        stage = self.ema_stage(network)
        z_i, text, _ = self._eval_embeddings(k)
        truth = self.eval_source.images(range(k), self.config.resolution)
        pipe = CascadePipeline(self.clip, {"decoder": stage}, progress=False)
        g = torch.Generator().manual_seed(self.train.seed)
        x = pipe._decode(z_i, text, torch.zeros(k, dtype=torch.bool), pipe._sampling(), "decoder", g)["decoder"]
        grid(tensor_to_pil(torch.cat([truth, x.float()])), cols=k).save(out_dir / f"{self.role}-step-{step:08d}.png")
        z_x = self.clip.encode_image(x.float())
        metrics = {"decoder/clip_cosine_to_source": float((F.normalize(z_x, dim=-1) * z_i).sum(-1).mean())}
        write_json(out_dir / f"{self.role}-step-{step:08d}.json", metrics)
        return metrics


class SuperResTask(StageTask):
    """x0 = a random train_crop of the high-resolution image; cond = the same region at the low
    resolution through lowres_condition(train=True) at aug_level ~ U[0, augmentation.max_level]."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        c = self.config
        self.factor = c.resolution // c.lowres_resolution
        self.crop = c.train_crop or c.resolution
        if c.resolution % c.lowres_resolution or self.crop % self.factor or self.crop > c.resolution:
            raise ValueError(f"[{self.role}]: train_crop {self.crop} must be at most resolution {c.resolution} and a "
                             f"multiple of the scale factor {c.resolution}/{c.lowres_resolution}")
        self.low_crop = self.crop // self.factor

    def sizes(self) -> list[int]:
        return [self.config.resolution, self.config.lowres_resolution]

    def fetch(self, index: int, g: torch.Generator) -> dict[str, Any]:
        c, f, lc = self.config, self.factor, self.low_crop
        span = c.lowres_resolution - lc + 1
        oy, ox = (int(v) for v in torch.randint(0, span, (2,), generator=g))
        high = self.source.image(index, c.resolution)[:, oy * f:oy * f + self.crop, ox * f:ox * f + self.crop]
        low = self.source.image(index, c.lowres_resolution)[:, oy:oy + lc, ox:ox + lc]
        max_level = c.augmentation.max_level if c.augmentation is not None else 0.0
        aug = torch.rand(1, generator=g) * max_level
        lowres = lowres_condition(low[None], self.crop, aug, c.augmentation, generator=g, train=True)[0]
        return {"x0": high.contiguous(), **self._diffusion(high.shape, g), "lowres": lowres, "aug_level": aug[0]}

    def prepare(self, batch: dict[str, Any]) -> tuple:
        x0, noise, lowres = self._images_in(batch["x0"], batch["noise"], batch["lowres"])
        return x0, {"lowres": lowres, "aug_level": batch["aug_level"]}, batch["t"], noise

    @torch.no_grad()
    def evaluate(self, network: nn.Module, out_dir: Path, step: int) -> dict[str, float]:
        """Rows: the low-resolution input (upsampled), the sample, the true high-resolution image."""
        c = self.config
        k = min(self.train.sample_count, 4, len(self.eval_source))
        stage = self.ema_stage(network)
        low = self.eval_source.images(range(k), c.lowres_resolution)
        truth = self.eval_source.images(range(k), c.resolution)
        g = torch.Generator().manual_seed(self.train.seed)
        aug = torch.full((k,), c.sampling.aug_level)
        cond = {"lowres": lowres_condition(low, c.resolution, aug, c.augmentation, generator=g), "aug_level": aug}
        x = stage.sample((k, 3, c.resolution, c.resolution), cond, generator=g).clamp(-1, 1).float()
        rows = torch.cat([upsample(low, c.resolution), x, truth])
        grid(tensor_to_pil(rows), cols=k).save(out_dir / f"{self.role}-step-{step:08d}.png")
        mse = (x - truth).pow(2).flatten(1).mean(1).clamp(min=1e-10)
        metrics = {f"{self.role}/psnr": float((10 * torch.log10(4.0 / mse)).mean())}
        write_json(out_dir / f"{self.role}-step-{step:08d}.json", metrics)
        return metrics


class ClipTrainModule(nn.Module):
    """open_clip's contrastive loss (ClipLoss) on (image, caption) batches; features gathered across processes."""

    def __init__(self, clip: Any, rank: int = 0, world_size: int = 1):
        super().__init__()
        from open_clip.loss import ClipLoss

        self.clip = clip
        self.loss = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank,
                             world_size=world_size)

    @property
    def network(self) -> nn.Module:
        return self.clip.model

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        model = self.clip.model
        image_features = model.encode_image(self.clip.prepare_images(images), normalize=True)
        text_features = model.encode_text(ids, normalize=True)
        return self.loss(image_features, text_features, model.logit_scale.exp())


class ClipTask(Task):
    """CLIP itself: images at CLIP's input size (no flips: captions say left and right) with their captions."""

    role = "clip"

    def __init__(self, train: TrainConfig, clip: Any, source: Source, eval_source: Source,
                 rank: int = 0, world_size: int = 1):
        super().__init__(train, clip, source, eval_source)
        self.size = clip.image_size[0]
        self.rank, self.world_size = rank, world_size
        self.export_clip = copy.deepcopy(clip).freeze()

    def sizes(self) -> list[int]:
        return [self.size]

    def fetch(self, index: int, g: torch.Generator) -> dict[str, Any]:
        item = {"image": self.source.image(index, self.size), "caption": self.source.caption(index)}
        if self.train.hard_negatives:
            item["twin_image"], item["twin_caption"] = self._twin(index, g)
        return item

    def _twin(self, index: int, g: torch.Generator) -> tuple[Tensor, str]:
        """The item's scene with one attribute changed, rendered, with a caption in the source's style."""
        from ..data.shapeworld import N_TEMPLATES, caption, edit_scene, editable_attributes, render_array

        if not isinstance(self.source, ShapeWorldSource):
            raise ValueError("train.hard_negatives needs ShapeWorld data: twins are edited scenes")
        rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=g)))
        scene = self.source.scenes[index]
        options = [a for a in self.train.hard_negative_attributes if a in editable_attributes(scene)]
        twin = edit_scene(scene, rng, options[int(rng.integers(len(options)))] if options else None)
        template = int(rng.integers(N_TEMPLATES)) if self.source.captions_mode == "paraphrase" else 0
        image = _uint8_to_float(render_array(twin, self.size))
        return image, caption(twin, template)

    def prepare(self, batch: dict[str, Any]) -> tuple:
        images, captions = batch["image"], list(batch["caption"])
        if "twin_image" in batch:
            images = torch.cat([images, batch["twin_image"]])
            captions += list(batch["twin_caption"])
        return images, self.clip.tokenize(captions)

    def build_module(self) -> nn.Module:
        self.clip.unfreeze()
        return ClipTrainModule(self.clip, self.rank, self.world_size)

    def after_step(self, module: nn.Module) -> None:
        """open_clip clamps the temperature to [0, ln 100] after each step."""
        with torch.no_grad():
            module.network.logit_scale.clamp_(0, math.log(100))

    def _ema_clip(self, network: nn.Module) -> Any:
        self.export_clip.model.load_state_dict(network.state_dict())
        return self.export_clip

    @torch.no_grad()
    def evaluate(self, network: nn.Module, out_dir: Path, step: int) -> dict[str, float]:
        """Top-1 retrieval accuracy on the held-out batch (a hit: the retrieved caption is the same text)."""
        clip = self._ema_clip(network)
        k = min(self.train.eval_size, len(self.eval_source))
        captions = [self.eval_source.caption(i) for i in range(k)]
        z_i = encode_items(clip, self.eval_source, range(k))
        z_t = encode_captions(clip, captions)["text_embed"]
        sim = z_i @ z_t.T  # (k, k)
        same = torch.tensor([[a == b for b in captions] for a in captions])
        rows = torch.arange(k)
        metrics = {
            "clip/image_to_text_top1": float(same[rows, sim.argmax(1)].float().mean()),
            "clip/text_to_image_top1": float(same[sim.argmax(0), rows].float().mean()),
            "clip/chance": float(same.float().mean()),
        }
        if isinstance(self.eval_source, ShapeWorldSource):  # hard negatives, per attribute (chance 0.5)
            from ..eval.judging import twin_accuracy

            twins = twin_accuracy(clip, self.eval_source.scenes[:k], seed=step, image_size=self.size)
            metrics.update({f"clip/twin_{attr}": v["accuracy"] for attr, v in twins.items()})
        write_json(out_dir / f"clip-step-{step:08d}.json", metrics)
        return metrics

    def export(self, network: nn.Module, model_dir: Path) -> None:
        self._ema_clip(network).save_pretrained(model_dir / "clip")


def make_task(role: str, train: TrainConfig, clip: Any, source: Source, eval_source: Source,
              stage: Optional[Stage] = None, rank: int = 0, world_size: int = 1) -> Task:
    if role == "clip":
        return ClipTask(train, clip, source, eval_source, rank, world_size)
    cls = {"prior": PriorTask, "decoder": DecoderTask, "sr256": SuperResTask, "sr1024": SuperResTask}[role]
    return cls(stage, train, clip, source, eval_source)


__all__ = ["ClipTask", "DecoderTask", "DiffusionLoss", "PriorTask", "SuperResTask", "Task",
           "make_task"]
