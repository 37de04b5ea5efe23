"""One trainer for every stage, on accelerate: one CPU, several processes or GPUs, the same script.

    Trainer("decoder", "configs/micro.toml", MODEL_DIR, RUN_DIR).run()

reads the frozen CLIP from MODEL_DIR/clip, trains MODEL_DIR/decoder's network (starting from
its weights) and writes the EMA weights back into MODEL_DIR/decoder at every checkpoint and at
the end. RUN_DIR holds the training state:

    RUN/checkpoints/step-00001000/   model, EMA, optimizer, scheduler, RNG states (one file per
                                     process), state.json (step, data position, …); written as
                                     tmp-… then renamed; the last `keep_checkpoints` are kept
    RUN/loss.csv                     step, loss, lr, samples/s, wall time
    RUN/tensorboard/                 the same curve and the evaluation metrics
    RUN/samples/                     a grid (or metrics JSON) per checkpoint
    RUN/cache/clip-embeddings.safetensors   the frozen CLIP's embeddings of the training pool

Resume is exact: every random choice of a sample comes from (seed, stream position) (see
cascade.train.data), and the model, optimizer, scheduler, EMA and RNG states are restored, so
an interrupted and resumed run has the loss curve of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import (CONFIG_NAME, INDEX_NAME, CheckpointError, load_stage, load_stage_config, load_weights,
                          save_weights, write_json)
from ..config import ConfigError, to_dict
from ..hardware import describe_cpu, native_bf16
from ..model_config import ModelConfig, load_model_config
from ..stage import Stage
from .config import STAGES, TrainConfig, train_config_from_table
from .data import Source, StreamDataset, StreamSampler, build_embedding_cache, open_sources
from .ema import EMA
from .statefile import load_state, save_state, state_exists
from .tasks import make_task

log = logging.getLogger("cascade.train")
STOP_FILE = "STOP"  # `touch RUN/STOP`: the run checkpoints after its current step and stops
CSV_FIELDS = ("step", "loss", "lr", "samples_per_s", "wall_time")


def _on_sigterm(callback) -> Any:
    """Call `callback` on SIGTERM instead of dying mid-step; returns the function that restores the old handler.
    A no-op off the main thread (where Python cannot install signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: callback())
    return lambda: signal.signal(signal.SIGTERM, previous)


@dataclass
class TrainResult:
    step: int  # optimizer steps done (over the whole run, across resumes)
    stopped: str  # "max_steps", "max_minutes" or "stop request" (RUN/STOP or SIGTERM)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) rows logged by this session
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation's
    main_process: bool = True  # False on the other processes of a multi-process run


@dataclass(frozen=True)
class Request:
    """A checked training request: everything refused up front is refused while building this."""

    role: str
    model_config: ModelConfig
    train: TrainConfig
    model_dir: Path
    run_dir: Path
    data: str
    resume: bool
    max_minutes: Optional[float]
    source: Source  # the training items
    eval_source: Source  # the held-out items of the sample grids and metrics


def check_request(role: str, config_path: str | Path, model_dir: str | Path, run_dir: str | Path, *,
                  data: str = "shapeworld", resume: bool = False, max_steps: Optional[int] = None,
                  max_minutes: Optional[float] = None, overrides: Optional[Mapping[str, Any]] = None) -> Request:
    """Every check that needs no model: stage, config and train table, model folder, CLIP, --data, limits."""
    if role not in STAGES:
        raise ConfigError(f"unknown stage {role!r} (stages: {', '.join(STAGES)})")
    model_config = load_model_config(config_path)
    if role != "clip" and role not in model_config.stages:
        raise ConfigError(f"{config_path}: no [{role}] table, so there is no {role} stage to train")
    overrides = dict(overrides or {})
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    train = train_config_from_table(role, model_config.train.get(role), overrides)
    model_dir = Path(model_dir)
    if not (model_dir / INDEX_NAME).is_file():
        raise CheckpointError(f"model folder not found: {model_dir} has no {INDEX_NAME} "
                              f"(make one with `cascade init {config_path} {model_dir}`)")
    if role != "clip":
        for name in ("config.json", "model.safetensors"):
            if not (model_dir / "clip" / name).is_file():
                raise CheckpointError(f"{model_dir / 'clip'} has no {name}: stage {role} needs the frozen CLIP "
                                      "(run `cascade train clip` first, or `cascade init`)")
    if train.teacher is not None:
        check_teacher(train.teacher, role, model_config)
    if train.teacher_guidance is not None and role not in ("prior", "decoder"):
        raise ConfigError(f"{role}.train.teacher_guidance: {role} samples without guidance")
    if max_minutes is not None and max_minutes < 0:
        raise ValueError(f"--max-minutes must be at least 0, got {max_minutes}")
    run_dir = Path(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        if not resume:
            raise ValueError(f"{run_dir} already holds checkpoints: pass --resume to continue, or another run folder")
        check_resumable(checkpoint, role, train)
    if data != "shapeworld":
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"--data {data}: no such folder or file (or pass 'shapeworld')")
        if path.suffix == ".safetensors" and role != "prior":
            raise ValueError(f"--data {data}: pre-computed embeddings can train the prior only, not {role}")
    # opening a folder reads every image header: a folder with no usable pair is refused here
    source, eval_source = open_sources(data, train.dataset_size, train.seed, train.captions, train.eval_size)
    return Request(role, model_config, train, model_dir, run_dir, data, resume, max_minutes, source, eval_source)


def check_resumable(checkpoint: Path, role: str, train: TrainConfig) -> dict[str, Any]:
    """The checkpoint's state, if a run of `role` with recipe `train` can continue from it."""
    try:
        state = json.loads((checkpoint / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{checkpoint / 'state.json'}: unreadable ({e})") from e
    if state.get("role") != role:
        raise ValueError(f"{checkpoint} is a checkpoint of stage {state.get('role')!r}, not {role!r}")
    old = state.get("train", {})
    for key in ("batch_size", "seed", "dataset_size", "captions"):
        if key in old and old[key] != getattr(train, key):
            raise ValueError(f"{checkpoint}: {key} was {old[key]!r}, now {getattr(train, key)!r}; a resumed run keeps "
                             "its batch size and data (start another run folder to change them)")
    return state


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint (step-* with state.json); tmp-* leftovers are ignored."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step-*") if p.is_dir() and (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, and CUDA when present) RNG states, as plain data and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Work inside leaves every global RNG as it found it (sampling grids must not shift the run)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def lr_lambda(train: TrainConfig):
    def factor(step: int) -> float:  # step = optimizer steps taken so far
        warm = min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps else 1.0
        if train.lr_schedule == "cosine":
            progress = min(1.0, max(0.0, (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)))
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        return warm
    return factor


def teacher_folder(path: str | Path, role: str) -> Path:
    """The stage folder `train.teacher` names: a model folder's `role` stage, or a stage folder itself."""
    path = Path(path)
    return path / role if (path / role / CONFIG_NAME).is_file() else path


def check_teacher(path: str | Path, role: str, model_config: ModelConfig) -> None:
    """Refuse a teacher that is missing, of another role, or of another schedule or parametrization
    (its predictions would be of another quantity than the network's)."""
    if role == "clip":
        raise ConfigError("clip.train: teacher is for the diffusion stages")
    folder = teacher_folder(path, role)
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{role}.train.teacher: {path} holds neither {role}/{CONFIG_NAME} nor {CONFIG_NAME}")
    try:
        theirs = load_stage_config(folder, role)
    except CheckpointError as e:
        raise CheckpointError(f"{role}.train.teacher: {e}") from None
    ours = model_config.stages[role]
    for name, a, b in (("schedule", theirs.schedule, ours.schedule),
                       ("parametrization", theirs.diffusion.parametrization, ours.diffusion.parametrization)):
        if a != b:
            raise ConfigError(f"{role}.train.teacher: its {name} {a} differs from the config's {b}")


class Trainer:
    def __init__(self, role: str, config_path: str | Path, model_dir: str | Path, run_dir: str | Path, *,
                 data: str = "shapeworld", resume: bool = False, max_steps: Optional[int] = None,
                 max_minutes: Optional[float] = None, overrides: Optional[Mapping[str, Any]] = None,
                 progress: bool = True):
        self.req = check_request(role, config_path, model_dir, run_dir, data=data, resume=resume,
                                 max_steps=max_steps, max_minutes=max_minutes, overrides=overrides)
        self.role, self.train = role, self.req.train
        self.progress = progress

    # ------------------------------------------------------------------ building
    def _accelerator(self):
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import is_tensorboard_available

        log_with = ["tensorboard"] if is_tensorboard_available() else None
        precision = self.train.mixed_precision
        # the device accelerate will pick (asking its state here would initialise it before the Accelerator)
        on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        device = "cpu" if on_cpu else "cuda"
        if precision == "bf16" and not native_bf16(device):
            # emulated bf16 (an AVX2 CPU) is many times slower than fp32, and changes nothing else
            if os.environ.get("RANK", "0") == "0":
                log.warning("mixed_precision bf16: %s has no native bf16 (%s); training in fp32",
                            device, describe_cpu() if on_cpu else device)
            precision = "no"
        acc = Accelerator(mixed_precision=precision, gradient_accumulation_steps=self.train.grad_accum,
                          log_with=log_with, project_dir=str(self.req.run_dir),
                          dataloader_config=DataLoaderConfiguration(split_batches=True))
        self.train.check_processes(acc.num_processes)
        return acc

    def _models(self, acc) -> tuple[Any, Optional[Stage]]:
        from ..clip import CLIP

        req = self.req
        clip_dir = req.model_dir / "clip"
        if self.role == "clip":
            has = (clip_dir / "model.safetensors").is_file()
            return (CLIP.from_pretrained(clip_dir) if has else CLIP.from_config(req.model_config.clip)), None
        clip = CLIP.from_pretrained(clip_dir)
        torch.manual_seed(self.train.seed)
        stage = Stage(req.model_config.stages[self.role])
        weights = req.model_dir / self.role / "model.safetensors"
        if weights.is_file():
            try:
                load_weights(stage.network, weights, where=str(weights.parent))
            except CheckpointError as e:
                raise CheckpointError(f"{e} (the config's [{self.role}] differs from the model folder's: "
                                      "re-run `cascade init` for a new architecture)") from None
        return clip, stage

    def _optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for _, p in network.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on biases, norms, scalars
        t = self.train
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        try:  # one fused kernel per step (CPU and CUDA); the per-tensor loop costs ~0.2 s a step on a CPU
            return torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas, eps=t.adam_eps, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas, eps=t.adam_eps, foreach=True)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, acc, step: int, network: nn.Module, optimizer, scheduler, ema: Optional[EMA],
                         extra: dict[str, Any]) -> None:
        folder = self.req.run_dir / "checkpoints"
        tmp, final = folder / f"tmp-step-{step:08d}", folder / f"step-{step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        save_state(rng_state(), tmp / f"rng-{acc.process_index}")
        if acc.is_main_process:
            save_weights(network, tmp / "model.safetensors")
            save_file({k: v.contiguous() for k, v in ema.state_tensors().items()}, str(tmp / "ema.safetensors"))
            save_state(optimizer.state_dict(), tmp / "optimizer")
            save_state(scheduler.state_dict(), tmp / "scheduler")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"role": self.role, "step": step, "position": step * self.train.batch_size,
                     "ema_updates": ema.num_updates, "num_processes": acc.num_processes,
                     "train": to_dict(self.train), **extra}
            write_json(tmp / "state.json", state)  # last: a checkpoint is complete once it has state.json
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            done = sorted((p for p in folder.glob("step-*") if (p / "state.json").is_file()),
                          key=lambda p: int(p.name.split("-")[1]))
            for old in done[:-self.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _load_checkpoint(self, acc, path: Path, network: nn.Module, optimizer, scheduler,
                         ema: Optional[EMA]) -> dict[str, Any]:
        state = check_resumable(path, self.role, self.train)
        load_weights(network, path / "model.safetensors", where=str(path))
        optimizer.load_state_dict(load_state(path / "optimizer"))
        scheduler.load_state_dict(load_state(path / "scheduler"))
        if ema is not None:
            ema.load_state_tensors(load_file(str(path / "ema.safetensors")), state["ema_updates"])
        if state.get("num_processes") != acc.num_processes:
            log.warning("%s was written by %s processes, resuming on %d: the data stream continues exactly, "
                        "RNG states do not", path, state.get("num_processes"), acc.num_processes)
        return state

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        acc = self._accelerator()
        try:
            return self._run(acc)
        finally:
            acc.end_training()
            _release_accelerate_state(acc)

    def _run(self, acc) -> TrainResult:
        req, t, role = self.req, self.train, self.role
        main = acc.is_main_process
        if main:
            (req.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            for leftover in (req.run_dir / "checkpoints").glob("tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        source, eval_source = req.source, req.eval_source
        if t.attention is not None:
            from stages.common import set_attention_implementation

            set_attention_implementation(t.attention)
        clip, stage = self._models(acc)
        task = make_task(role, t, clip, source, eval_source, stage, acc.process_index, acc.num_processes)
        if task.needs_cache:
            with acc.main_process_first():
                task.cache = build_embedding_cache(clip, source, req.model_dir / "clip" / "model.safetensors",
                                                   req.run_dir / "cache" / "clip-embeddings.safetensors")
        source.prepare(task.sizes())
        checkpoint = latest_checkpoint(req.run_dir) if req.resume else None
        task.setup(fresh=checkpoint is None)
        if t.teacher is not None:
            task.teacher = load_stage(teacher_folder(t.teacher, role), role).requires_grad_(False).to(acc.device)
            if t.channels_last:
                task.teacher.network.to(memory_format=torch.channels_last)
        module = task.build_module()
        network = module.network
        if t.channels_last and role != "clip":
            network.to(memory_format=torch.channels_last)
        ema = EMA(network, t.ema_decay, t.ema_warmup) if main else None
        ema_network = copy.deepcopy(network) if main else None
        optimizer = self._optimizer(network)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t))
        step, extra = 0, {"elapsed": 0.0, "window_loss": 0.0, "window_steps": 0}
        rng_file = None
        if checkpoint is not None:
            state = self._load_checkpoint(acc, checkpoint, network, optimizer, scheduler, ema)
            step = state["step"]
            extra = {k: state.get(k, v) for k, v in extra.items()}
            rng_file = checkpoint / f"rng-{acc.process_index}"
        if t.compile and role != "clip":
            stage.denoiser.network = torch.compile(stage.network)
        dataset = StreamDataset(len(source), t.seed, task.fetch)
        workers = {"num_workers": t.num_workers}
        if t.num_workers:  # fork: workers share the pools and the embedding cache instead of pickling them
            workers["multiprocessing_context"] = "fork"
        loader = DataLoader(dataset, batch_size=t.micro_batch_size, sampler=StreamSampler(step * t.batch_size),
                            drop_last=True, **workers)
        model, optimizer, loader, scheduler = acc.prepare(module, optimizer, loader, scheduler)
        self._start_logs(acc, step)
        if rng_file is not None and state_exists(rng_file):
            set_rng_state(load_state(rng_file))
        if main:
            log.info("training %s from step %d to %d on %d process(es), global batch %d, %s", role, step, t.max_steps,
                     acc.num_processes, t.batch_size, acc.mixed_precision)

        result = TrainResult(step=step, stopped="max_steps", main_process=main)
        # RUN/STOP (a file) or SIGTERM: checkpoint after the current step and stop, as --max-minutes does
        stop_file, stop_signal = req.run_dir / STOP_FILE, threading.Event()
        restore_signal = _on_sigterm(stop_signal.set) if main else (lambda: None)
        session_start, elapsed_before = time.time(), extra["elapsed"]
        window_time, window_samples = 0.0, 0
        bar = _progress(total=t.max_steps, initial=step, desc=role, disable=not (main and self.progress))
        batches = iter(loader)
        model.train()
        while step < t.max_steps:
            step_start = time.time()
            step_loss = torch.zeros(())
            for _ in range(t.grad_accum):
                batch = next(batches)
                with acc.accumulate(model):
                    loss = model(*task.prepare(batch))
                    acc.backward(loss)
                    if acc.sync_gradients and t.grad_clip is not None:
                        acc.clip_grad_norm_(model.parameters(), t.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach().float() / t.grad_accum
            step += 1
            task.after_step(module)
            if main:
                ema.update(network)
            out_of_time = main and req.max_minutes is not None and time.time() - session_start >= req.max_minutes * 60
            asked = main and (stop_file.exists() or stop_signal.is_set())
            stats = acc.reduce(torch.stack([step_loss, torch.tensor(float(out_of_time or asked))]), reduction="sum")
            loss_value = float(stats[0]) / acc.num_processes
            stop = bool(stats[1] > 0)
            window_time += time.time() - step_start  # training time only: checkpoints and grids excluded
            window_samples += t.batch_size
            extra["window_loss"] += loss_value
            extra["window_steps"] += 1
            extra["elapsed"] = elapsed_before + time.time() - session_start
            if step % t.log_every == 0 or step == t.max_steps or stop:
                row = {"step": step, "loss": extra["window_loss"] / extra["window_steps"],
                       "lr": scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(window_time, 1e-9),
                       "wall_time": extra["elapsed"]}
                self._log_row(acc, row)
                result.losses.append((step, row["loss"]))
                bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{row['samples_per_s']:.1f}")
                extra["window_loss"], extra["window_steps"] = 0.0, 0
                window_time, window_samples = 0.0, 0
            bar.update(1)
            end = step >= t.max_steps or stop
            sample_now = bool(t.sample_every) and (step % t.sample_every == 0 or end)
            if step % t.checkpoint_every == 0 or end:
                self._save_checkpoint(acc, step, network, optimizer, scheduler, ema, extra)
                sample_now = sample_now or t.sample_every is None
                if main:
                    with preserved_rng():
                        ema.copy_to(ema_network)
                        task.export(ema_network, req.model_dir)
            if sample_now and main:
                with preserved_rng(), torch.no_grad():
                    ema.copy_to(ema_network)
                    result.metrics = task.evaluate(ema_network, req.run_dir / "samples", step)
                acc.log(result.metrics, step=step)
            if stop:
                result.stopped = "stop request" if asked else "max_minutes"
                break
            model.train()
        bar.close()
        restore_signal()
        if main and stop_file.exists():
            stop_file.unlink()  # obeyed: a later --resume trains on
        result.step = step
        acc.wait_for_everyone()
        return result

    # ------------------------------------------------------------------ logs
    def _start_logs(self, acc, step: int) -> None:
        """The loss CSV (rows after `step` dropped on resume) and the TensorBoard tracker."""
        if not acc.is_main_process:
            return
        path = self.req.run_dir / "loss.csv"
        rows = []
        if step > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        hparams = {k: v for k, v in to_dict(self.train).items() if isinstance(v, (int, float, str, bool))}
        init = {"tensorboard": {"purge_step": step + 1}} if step > 0 else {}
        acc.init_trackers("tensorboard", config={"stage": self.role, **hparams}, init_kwargs=init)

    def _log_row(self, acc, row: dict[str, float]) -> None:
        if not acc.is_main_process:
            return
        with open(self.req.run_dir / "loss.csv", "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow({k: repr(float(v)) if k != "step" else v for k, v in row.items()})
        acc.log({"train/loss": row["loss"], "train/lr": row["lr"], "train/samples_per_s": row["samples_per_s"]},
                step=row["step"])


def _release_accelerate_state(acc) -> None:
    """Forget accelerate's per-process singletons (mixed precision, accumulation) so that another
    Trainer can run in this process with other settings; the process group (PartialState) stays."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _progress(**kw: Any):
    from tqdm.auto import tqdm

    return tqdm(dynamic_ncols=True, **kw)


def read_loss_csv(run_dir: str | Path) -> list[dict[str, float]]:
    """The loss curve of a run, as dicts of CSV_FIELDS."""
    with open(Path(run_dir) / "loss.csv", newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def train(role: str, config_path: str | Path, model_dir: str | Path, run_dir: str | Path, **kw: Any) -> TrainResult:
    """Train one stage (see Trainer)."""
    return Trainer(role, config_path, model_dir, run_dir, **kw).run()


__all__ = ["Request", "TrainResult", "Trainer", "check_request", "check_resumable", "latest_checkpoint",
           "read_loss_csv", "train"]
