"""The training recipe of one stage: a frozen dataclass read from the `[ROLE.train]` table.

```toml
[decoder.train]
batch_size = 32        # samples per optimizer step, over every process and accumulation step
lr = 3e-4
mixed_precision = "bf16"
```
Unknown keys and bad values are refused, with the key's name, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

from ..config import ConfigError, from_dict

STAGES = ("clip", "prior", "decoder", "sr256", "sr1024")


@dataclass(frozen=True)
class TrainConfig:
    # optimisation
    batch_size: int = 32  # global batch: samples per optimizer step over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step (each process sees batch_size / (grad_accum · processes))
    lr: float = 1e-4  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 500  # linear warm-up from 0 to lr over this many optimizer steps
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up: flat, or cosine to 0 at max_steps
    max_steps: int = 10_000  # optimizer steps of the whole run (the CLI's --max-steps overrides)
    grad_clip: Optional[float] = 1.0  # clip the global gradient norm to this (None: off)
    ema_decay: float = 0.999  # EMA of the weights (what gets exported)
    ema_warmup: bool = True  # decay_n = min(ema_decay, (1 + n) / (10 + n)): early weights fade fast
    mixed_precision: Literal["no", "bf16"] = "bf16"  # bf16 autocast, fp32 master weights; fp32 (with a
    #   warning) on a device without native bf16 (a CPU without AMX or AVX-512 BF16: emulated, many times slower)
    min_snr_gamma: Optional[float] = 5.0  # Min-SNR-γ loss weighting (Hang et al. 2023); None: off
    loss_weighting: Literal["min_snr", "plain"] = "min_snr"  # plain: the parametrisation's own MSE
    #   (min_snr_gamma unused). Min-SNR gives v- and x0-prediction a weight → 0 at high noise
    #   (min(SNR, γ)/(SNR + 1) on the v-loss); trained briefly, such a UNet's x0 estimate near t = T
    #   is high-frequency junk that sampling from pure noise never removes (seen on the shapes decoder)
    high_noise_share: float = 0.0  # diffusion stages: this share of samples draws t from the noisiest
    high_noise_from: float = 0.6  #   (1 − high_noise_from) of the schedule, the rest from all of it. Flat-colour
    #   images keep their shapes to very low SNR, so a decoder decides an object's shape near t = T, where
    #   a uniform t spends few samples (measured on the shapes decoder: the condition changed its x0 error
    #   only for t ≥ 0.85 T)
    teacher: Optional[str] = None  # diffusion stages: a model folder (or stage folder) whose stage of this
    #   role the network learns to match (knowledge distillation: same schedule and parametrization, any
    #   layout; cascade.diffusion.loss). How the shipped decoder moved to the efficient layout (session 17)
    teacher_weight: float = 1.0  # the target: this share of the teacher's prediction, the rest the true target
    teacher_guidance: Optional[float] = None  # prior and decoder with a teacher: also match the teacher's
    #   classifier-free-guided prediction at this scale (the stage's sampling guidance), which sampling
    #   amplifies the errors of; each step then costs two passes of both networks
    # classifier-free guidance: condition drop probabilities
    text_drop_prob: float = 0.1  # prior: drop the text condition (DALL·E 2 §2.2)
    image_drop_prob: float = 0.1  # decoder: drop the CLIP image embedding (DALL·E 2 §2.1)
    decoder_text_drop_prob: float = 0.5  # decoder: drop the text (DALL·E 2 §2.1)
    # bookkeeping
    checkpoint_every: int = 1000  # optimizer steps between checkpoints (also at --max-minutes and at the end)
    keep_checkpoints: int = 2  # how many checkpoints to keep in RUN/checkpoints
    sample_every: Optional[int] = None  # steps between sample grids (None: at each checkpoint and the end; 0: never)
    sample_count: int = 8  # images (or embeddings) in a sample grid; SR grids draw at most 4
    log_every: int = 10  # steps between loss-curve rows (CSV, TensorBoard)
    # data
    seed: int = 0  # data seed: scenes, order, noise, drops, crops
    dataset_size: int = 100_000  # ShapeWorld pool size (scenes in the training stream)
    captions: Literal["canonical", "paraphrase"] = "canonical"  # ShapeWorld caption templates
    eval_size: int = 64  # held-out items for sample grids and CLIP retrieval
    hard_negatives: bool = False  # clip on ShapeWorld: each item comes with a twin that differs in one
    #   attribute (cascade.data.shapeworld.edit_scene), so a batch of B items holds 2B pairs. Without
    #   them, random batches rarely hold two scenes told apart by position alone, and a short-trained
    #   CLIP's text tower ignores position words (the first shipped CLIP: chance on position)
    hard_negative_attributes: tuple[str, ...] = ("colour", "shape", "size", "position", "background", "relation")
    #   the twin's edited attribute is drawn uniformly from those of this list that apply to the scene
    #   (repeat a name to weight it; any attribute when none of the list applies)
    num_workers: int = 0  # DataLoader worker processes
    # speed
    compile: bool = False  # torch.compile the network (inductor)
    channels_last: bool = False  # channels-last memory format for the UNets (and their inputs)
    attention: Optional[Literal["sdpa", "matmul"]] = None  # stages' attention kernel (None: the library default);
    #   "matmul" has the faster backward pass on CPUs (stages.common.set_attention_implementation)

    @property
    def loss_min_snr_gamma(self) -> Optional[float]:
        """The γ the diffusion loss is weighted with: min_snr_gamma under "min_snr", None under "plain"."""
        return self.min_snr_gamma if self.loss_weighting == "min_snr" else None

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "keep_checkpoints",
                    "sample_count", "log_every", "dataset_size", "eval_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.sample_every is not None and self.sample_every < 0:
            raise ValueError(f"sample_every must be at least 0 (or absent), got {self.sample_every}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.adam_eps <= 0:
            raise ValueError("weight_decay must be ≥ 0 and adam_eps > 0")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive (or absent), got {self.grad_clip}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive (or absent), got {self.min_snr_gamma}")
        for name in ("text_drop_prob", "image_drop_prob", "decoder_text_drop_prob", "high_noise_share",
                     "teacher_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.high_noise_from < 1:
            raise ValueError(f"high_noise_from must lie in [0, 1), got {self.high_noise_from}")
        from ..data.shapeworld import EDITABLE

        unknown = sorted(set(self.hard_negative_attributes) - set(EDITABLE))
        if unknown or not self.hard_negative_attributes:
            raise ValueError(f"hard_negative_attributes: expected names from {EDITABLE}, got "
                             f"{list(self.hard_negative_attributes)}")
        if self.teacher_guidance is not None and (self.teacher is None or self.teacher_guidance < 0):
            raise ValueError(f"teacher_guidance {self.teacher_guidance} needs a teacher and a scale of at least 0")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")

    @property
    def micro_batch_size(self) -> int:
        """Samples per accumulation step, over all processes."""
        return self.batch_size // self.grad_accum

    def check_processes(self, num_processes: int) -> None:
        """Refuse a global batch that does not split evenly over the processes."""
        if self.micro_batch_size % num_processes:
            raise ConfigError(
                f"train.batch_size {self.batch_size} / grad_accum {self.grad_accum} = {self.micro_batch_size} "
                f"samples per accumulation step do not split over {num_processes} processes"
            )


def train_config_from_table(role: str, table: Optional[Mapping[str, Any]] = None,
                            overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """The TrainConfig of `role` from its `[ROLE.train]` table (absent: defaults) and overrides."""
    if role not in STAGES:
        raise ConfigError(f"unknown stage {role!r} (stages: {', '.join(STAGES)})")
    data = {**dict(table or {}), **dict(overrides or {})}
    return from_dict(TrainConfig, data, where=f"{role}.train")


__all__ = ["STAGES", "TrainConfig", "train_config_from_table"]
