"""`cascade bench` (also `python tools/bench.py`): cascade's networks against the peers' at equal size.

    tools/bench.py --setup-peers DIR                      # once: a venv with diffusers + dalle2-pytorch
    cascade bench --peers DIR                             # full run: writes docs/bench.json + docs/bench.md
    cascade bench --peers DIR --quick --json out.json     # a few minutes: shipped sizes only

Per network (prior, decoder, SR-256, SR-1024; at the shipped sizes of configs/shapes.toml and at a
larger "base" size): ms per evaluation, median of interleaved rounds, for cascade and for the
same-sized networks of diffusers (PriorTransformer, UNet2DConditionModel / UNet2DModel configured
like Karlo's) and DALLE2-pytorch (DiffusionPriorNetwork, Unet), in three modes (fp32, fp32
channels-last, bf16 autocast channels-last), with parameter counts, FLOPs per evaluation and the
fraction of this CPU's matmul peak measured in the same run; then text -> 1024 wall time per stage
and peak RSS (in a fresh process), and decoder training samples/s against DALLE2-pytorch's Decoder.

The peers run in their own virtual environment, in a subprocess (`cascade/bench_worker.py`) that
talks JSON lines; they are never imported here. Networks and input batches: see `docs/bench.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .bench_worker import (COMPILED, DTYPE_OF_MODE, Runner, machine_probe, make_inputs, matmul_peak, median,
                           modes_for)
from .bench_report import render_markdown, summarize
from .hardware import native_bf16, peak_rss_mb

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "bench_worker.py"
DEFAULT_CONFIG = REPO / "configs" / "shapes.toml"
DEFAULT_PEERS = Path(os.environ.get("CASCADE_BENCH_PEERS", Path.home() / ".cache" / "cascade" / "bench-peers"))
KIND = {"prior": "prior", "decoder": "decoder", "sr256": "sr", "sr1024": "sr"}
PEERS = ("diffusers", "dalle2")
# The "base" size: each shipped network made larger (same structure, ~4-8x the FLOPs).
BASE = {
    "prior": {"width": 512, "layers": 8, "heads": 8},
    "decoder": {"model_channels": 192, "head_dim": 64, "context_dim": 384},
    "sr256": {"model_channels": 64},
    "sr1024": {"model_channels": 48},
}


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------- peers' environment
def peer_requirements() -> list[str]:
    """The peers' packages, with the torch (and torchvision) of cascade's environment pinned."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = [f"torch=={torch.__version__.split('+')[0]}"]
    try:
        reqs.append(f"torchvision=={version('torchvision').split('+')[0]}")
    except PackageNotFoundError:
        pass
    return reqs + ["diffusers", "dalle2-pytorch"]


def setup_peers(directory: Path) -> Path:
    """Make DIR a virtual environment holding the peers (never cascade's own environment)."""
    directory = Path(directory)
    python = directory / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    cmd = [str(python), "-m", "pip", "install", *peer_requirements()]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return python


def peer_python(directory: Optional[Path]) -> Optional[Path]:
    if directory is None:
        return None
    python = Path(directory) / "bin" / "python"
    return python if python.exists() else None


class PeerClient:
    """The peers' worker process: one JSON request per line, one JSON reply per line."""

    def __init__(self, python: Path, threads: int):
        self._stderr = tempfile.TemporaryFile(mode="w+")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        self.proc = subprocess.Popen([str(python), "-I", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, env=env)
        self.info = self.ask(cmd="hello", threads=threads)

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:]
            raise BenchError(f"the peers' worker died during {request.get('cmd')!r}:\n{tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(f"peer request {request.get('cmd')} failed: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        except BenchError:
            pass
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------- cascade's networks
def network_configs(config_path: Path) -> dict[str, dict[str, Any]]:
    """role -> {"network": full network config (dict), "batch": the batch one image is made with}."""
    from .model_config import load_model_config

    mc = load_model_config(config_path)
    out = {}
    for role, stage in mc.stages.items():
        s = stage.sampling
        guided = 2 if s.guidance != 1.0 else 1
        batch = guided * s.candidates  # one image: CFG halves × candidates (prior, decoder)
        out[role] = {"network": json.loads(json.dumps(dict(stage.network))), "batch": batch,
                     "class": stage.network_class, "steps": s.steps}
    return out


AMORTISED = 16  # the most evaluations one timed call of a prepared network makes


def cascade_runner(role: str, network: dict[str, Any], network_class: str, batch: int, steps: int = 1,
                   prepack: bool = True) -> Runner:
    """cascade's network as its sampler runs it. The prior and the decoder prepare their condition
    once per sampling run (`prepare_condition`: the prior's text prefix, the decoder's context
    tokens and conditioning embedding), so one timed call is that preparation and then
    min(`steps`, AMORTISED) evaluations, and its time and FLOPs are reported per evaluation (the
    decoder's 50 steps would spread the preparation thinner still). Its bf16 mode prepacks the
    weights where the pipeline does (`cascade.pipeline.PREPACKED`), unless `prepack` is false."""
    from .config import from_dict
    from .pipeline import PREPACKED
    from .stage import network_class as lookup

    prepack = prepack and role in PREPACKED
    cls = lookup(network_class, role)
    torch.manual_seed(0)
    net = cls(from_dict(cls.config_class, network, where=f"{role}.network"))
    inputs = make_inputs(KIND[role], network, batch)
    keys = {"prior": ("text_embed", "text_tokens", "text_mask"),
            "decoder": ("image_embed", "text_embed", "text_tokens", "text_mask")}.get(KIND[role])
    if keys is not None:
        evaluations = max(1, min(steps, AMORTISED))

        def call(i):
            cond = net.prepare_condition({k: i[k] for k in keys})
            for _ in range(evaluations):
                out = net(i["x"], i["t"], **cond)
            return out

        return Runner(net, call, inputs, evaluations=evaluations, prepack=prepack)

    def call(i):
        return net(i["x"], i["t"], lowres=i["lowres"], aug_level=i["aug_level"])

    return Runner(net, call, inputs, prepack=prepack)


def sized(network: dict[str, Any], role: str, size: str) -> dict[str, Any]:
    return network if size == "shipped" else {**network, **BASE[role]}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def peer_target(module: torch.nn.Module) -> int:
    """The parameters the peers' designs have a counterpart for, which their size is matched to:
    all but the decoder's text adapter (diffusers' and DALLE2-pytorch's UNets read the
    conditioning tokens directly; the adapter is ~5% of the shipped decoder's parameters and
    ~2% of its FLOPs, and is timed as part of cascade's decoder)."""
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith("text_adapter"))


# ---------------------------------------------------------------------------- per-network timing
def bench_network(role: str, size: str, spec: dict[str, Any], client: Optional[PeerClient], repeats: int,
                  log, compiled: bool = False, prepack: bool = True) -> dict[str, Any]:
    network = sized(spec["network"], role, size)
    batch = spec["batch"]
    kind = KIND[role]
    runner = cascade_runner(role, network, spec["class"], batch, spec.get("steps", 1), prepack=prepack)
    entry: dict[str, Any] = {
        "network": role, "size": size, "batch": batch, "network_config": network,
        "input_shapes": {k: list(v.shape) for k, v in runner.inputs.items()},
        "params": {"cascade": count(runner.module)}, "peer_configs": {}, "flops": {}, "ms": {}, "samples": {},
        "errors": {},
    }
    impls = ["cascade"]
    if client is not None:
        for peer in PEERS:
            key = f"{role}-{size}-{peer}"
            try:
                reply = client.ask(cmd="build", key=key, peer=peer, kind=kind, config=network, batch=batch,
                                   target=peer_target(runner.module))
            except BenchError as e:
                entry["errors"][peer] = str(e)
                log(f"  {peer}: {e}")
                continue
            entry["params"][peer] = reply["params"]
            entry["peer_configs"][peer] = reply["config"]
            impls.append(peer)
    entry["flops"]["cascade"] = runner.flops("fp32")
    for peer in impls[1:]:
        entry["flops"][peer] = client.ask(cmd="flops", key=f"{role}-{size}-{peer}")["flops"]

    def once(impl: str, mode: str, warm: bool = False) -> float:
        if impl == "cascade":
            return runner.warmup(mode) if warm else runner.time_once(mode)
        return client.ask(cmd="warmup" if warm else "time", key=f"{role}-{size}-{impl}", mode=mode)["ms"]

    modes = modes_for(kind, bf16=native_bf16(), compiled=compiled)
    for mode in modes:
        for impl in impls:
            once(impl, mode, warm=True)
    # Every round times every (mode, implementation) once, the order rotating, so that machine noise
    # hits all of them alike: the headline ratio sets a peer's best mode against cascade's default,
    # often two different modes, and they must come from the same stretch of time (before session 21
    # the modes ran one after the other, and a slow minute could fall on one mode only).
    # Switching a module's mode (its memory format) happens outside the timed calls.
    cases = [(mode, impl) for mode in modes for impl in impls]
    samples: dict[str, dict[str, list[float]]] = {mode: {impl: [] for impl in impls} for mode in modes}
    probes = [machine_probe()]  # the machine's speed before the first round and after every round
    for r in range(repeats):
        shift = r * (len(impls) + 1) % len(cases)  # each round starts one mode and one implementation further on
        for mode, impl in cases[shift:] + cases[:shift]:
            samples[mode][impl].append(once(impl, mode))
        probes.append(machine_probe())
    entry["machine_probe_gflops"] = probes
    for mode in modes:
        entry["samples"][mode] = samples[mode]
        entry["ms"][mode] = {impl: median(v) for impl, v in samples[mode].items()}
        log(f"  {role:7s} {size:7s} {mode:15s} " + "  ".join(f"{i} {entry['ms'][mode][i]:8.1f} ms" for i in impls))
    for peer in impls[1:]:
        client.ask(cmd="drop", key=f"{role}-{size}-{peer}")
    return entry


# ---------------------------------------------------------------------------- training
def bench_training(config_path: Path, spec: dict[str, Any], client: Optional[PeerClient], steps: int,
                   log) -> dict[str, Any]:
    """Decoder optimizer steps at the shipped size and training batch: cascade's recipe (its
    [decoder.train] settings: bf16, channels-last, attention kernel, loss weighting, clipping,
    fused AdamW; no data loading, no EMA) against DALLE2-pytorch's Decoder loss with the same settings."""
    import stages.common as common

    from .model_config import load_model_config
    from .stage import Stage
    from .train.config import train_config_from_table

    mc = load_model_config(config_path)
    t = train_config_from_table("decoder", mc.train.get("decoder"))
    B = t.batch_size
    bf16 = t.mixed_precision == "bf16" and native_bf16()  # the trainer's own fallback to fp32
    torch.manual_seed(0)
    stage = Stage(mc.stages["decoder"]).train()
    net = stage.network
    if t.channels_last:
        net.to(memory_format=torch.channels_last)
    i = make_inputs("decoder", spec["network"], B, seed=2)
    g = torch.Generator().manual_seed(3)
    x0 = i["x"].clamp(-1, 1)
    if t.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    cond = {"image_embed": i["image_embed"], "text_embed": i["text_embed"], "text_tokens": i["text_tokens"],
            "text_mask": i["text_mask"], "image_drop": torch.rand(B, generator=g) < t.image_drop_prob,
            "text_drop": torch.rand(B, generator=g) < t.decoder_text_drop_prob}
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas, eps=t.adam_eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas, eps=t.adam_eps, foreach=True)
    previous = common._ATTENTION_IMPL
    if t.attention is not None:
        common.set_attention_implementation(t.attention)

    gamma = t.loss_min_snr_gamma  # the trainer's loss weighting

    def cascade_step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = stage.loss(x0, cond, min_snr_gamma=gamma)
        loss.backward()
        if t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    out: dict[str, Any] = {"batch": B, "bf16": bf16, "channels_last": t.channels_last, "attention": t.attention,
                           "min_snr_gamma": gamma,
                           "params": {"cascade": count(net)}, "seconds": {}, "samples_per_second": {}, "errors": {}}
    impls = ["cascade"]
    try:
        cascade_step()  # warm-up
        if client is not None:
            try:
                reply = client.ask(cmd="train_build", key="train", config=spec["network"], batch=B, bf16=bf16,
                                   channels_last=t.channels_last, target=peer_target(net))
                out["params"]["dalle2"] = reply["params"]
                out["dalle2_config"] = reply["config"]
                impls.append("dalle2")
            except BenchError as e:
                out["errors"]["dalle2"] = str(e)
        samples: dict[str, list[float]] = {impl: [] for impl in impls}
        for r in range(steps):
            order = impls if r % 2 == 0 else impls[::-1]
            for impl in order:
                if impl == "cascade":
                    samples[impl].append(cascade_step())
                else:
                    samples[impl].append(client.ask(cmd="train_step", key="train")["seconds"])
        if client is not None and "dalle2" in impls:
            client.ask(cmd="drop", key="train")
    finally:
        common.set_attention_implementation(previous)
    out["samples"] = samples
    for impl, v in samples.items():
        out["seconds"][impl] = median(v)
        out["samples_per_second"][impl] = B / median(v)
    log("  training " + "  ".join(f"{i} {out['samples_per_second'][i]:.1f} samples/s" for i in impls))
    return out


# ---------------------------------------------------------------------------- text -> 1024
def e2e_child(model: str, threads: int, repeats: int, prompt: str) -> None:
    """Run in a fresh process: load the model, one cold and `repeats` warm text -> 1024 generations."""
    from .pipeline import CascadePipeline

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipe = CascadePipeline.from_pretrained(model, progress=False)
    load = time.perf_counter() - t0
    times: dict[str, list[float]] = {}
    run_stage, encode = pipe._run_stage, pipe._encode_text

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            times.setdefault(name, []).append(time.perf_counter() - t)
            return out
        return wrapper

    pipe._encode_text = timed("clip", encode)
    pipe._run_stage = lambda role, *a, **kw: timed(role, lambda *b, **c: run_stage(role, *b, **c))(*a, **kw)
    totals = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        image = pipe(prompt, seed=i, final_size=1024)[0]
        totals.append(time.perf_counter() - t)
        if i == 0:  # the cold call: its stage times apart from the repeats'
            first = {k: sum(v) for k, v in times.items()}
            times.clear()
    result = {
        "model": str(model), "load_seconds": load, "first_seconds": totals[0], "first_stage_seconds": first,
        "seconds": median(totals[1:]) if repeats else totals[0], "repeats": repeats,
        "stage_seconds": {k: median(v) for k, v in times.items()} if repeats else first,
        "image_size": list(image.size), "bf16": sorted(pipe.bf16), "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }
    print("E2E " + json.dumps(result), flush=True)


def bench_e2e(model: Optional[str], config_path: Path, threads: int, repeats: int, log) -> dict[str, Any]:
    from .pipeline import DEFAULT_MODEL_DIR

    prompt = "a large red circle in the center on a white background"
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            if DEFAULT_MODEL_DIR.is_dir():
                model, origin = str(DEFAULT_MODEL_DIR), "shipped default model"
            else:
                model = str(Path(tmp) / config_path.stem)
                origin = f"`cascade init configs/{config_path.name}` (no shipped model yet: same sizes and speed)"
                subprocess.run([sys.executable, "-m", "cascade", "init", str(config_path), model], check=True,
                               stdout=subprocess.DEVNULL)
        else:
            origin = "--model"
        code = f"from cascade.bench import e2e_child; e2e_child({model!r}, {threads}, {repeats}, {prompt!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("E2E ")]
    if proc.returncode or not lines:
        raise BenchError(f"text -> 1024 run failed:\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1][4:])
    result["origin"] = origin
    result["prompt"] = prompt
    log(f"  text -> 1024: {result['seconds']:.2f} s (first {result['first_seconds']:.2f} s), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


# ---------------------------------------------------------------------------- the run
def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "amx": any(f.startswith("amx") for f in flags),
            "avx512_bf16": "avx512_bf16" in flags, "native_bf16": native_bf16(), "loadavg_start": list(os.getloadavg())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = (lambda msg: None) if args.silent else (lambda msg: print(msg, file=sys.stderr, flush=True))
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    config_path = Path(args.config)
    specs = network_configs(config_path)
    sizes = ["shipped"] if args.quick else ["shipped", "base"]
    if args.sizes:
        sizes = args.sizes.split(",")
    roles = args.networks.split(",") if args.networks else list(specs)
    # 9 rounds since session 21 (quick: 3 until session 19, then 5; full: 7): on this 2-core VM single quick runs
    # put the decoder's ratio anywhere from 1.27x to 1.69x within an hour, its samples drifting for seconds at a time
    repeats = args.repeats or 9
    started = time.time()
    result: dict[str, Any] = {"command": " ".join(sys.argv), "quick": bool(args.quick), "config": str(config_path),
                              "machine": machine_info(threads), "note": args.note, "repeats": repeats,
                              "interleaved": "modes and implementations",  # (before session 21: implementations)
                              "modes": {"fp32": "fp32, NCHW", "fp32_cl": "fp32, channels-last",
                                        "bf16_cl": "bf16 autocast, channels-last"},
                              # cascade's bf16 modes on oneDNN-prepacked weights, as its pipeline runs (session 22)
                              "prepacked": not args.no_prepack}
    if args.compile:
        result["modes"].update({m + COMPILED: result["modes"][m] + ", torch.compile (inductor; compiled in the "
                                "warm-up, not timed)" for m in ("fp32_cl", "bf16_cl")})
    python = peer_python(Path(args.peers)) if args.peers else None
    if args.peers and python is None:
        raise BenchError(f"no peers' environment at {args.peers}: make one with `python tools/bench.py "
                         f"--setup-peers {args.peers}`")
    client = PeerClient(python, threads) if python else None
    if client is None:
        log("no peers' environment (--peers DIR): timing cascade alone")
    result["peers"] = client.info if client else None
    try:
        log(f"matmul peak ({threads} threads)")
        peaks = [matmul_peak(threads, repeats=3 if args.quick else 5, bf16=native_bf16())]
        log("  " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks[0].items()))
        result["networks"] = []
        for size in sizes:
            for role in roles:
                result["networks"].append(bench_network(role, size, specs[role], client, repeats, log,
                                                        compiled=args.compile, prepack=not args.no_prepack))
        if not args.no_train and "decoder" in specs:
            log("decoder training")
            result["training"] = bench_training(config_path, specs["decoder"], client, args.train_steps or
                                                (2 if args.quick else 5), log)
        peaks.append(matmul_peak(threads, repeats=3 if args.quick else 5, bf16=native_bf16()))
    finally:
        if client is not None:
            client.close()
    result["matmul_peak_gflops"] = {k: max(p[k] for p in peaks) for k in peaks[0]}
    result["matmul_peak_samples"] = peaks
    for entry in result["networks"]:
        entry["peak_fraction"] = {
            mode: {impl: entry["flops"][impl] / (ms * 1e-3) / (result["matmul_peak_gflops"][DTYPE_OF_MODE[mode]] * 1e9)
                   for impl, ms in by_impl.items()}
            for mode, by_impl in entry["ms"].items()
        }
    if not args.no_e2e:
        log("text -> 1024")
        result["e2e"] = bench_e2e(args.model, config_path, threads, 1 if args.quick else 2, log)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_seconds"] = time.time() - started
    result["summary"] = summarize(result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peers", default=str(DEFAULT_PEERS) if peer_python(DEFAULT_PEERS) else None, metavar="DIR",
                   help="the peers' virtual environment (make it with `tools/bench.py --setup-peers DIR`; "
                        f"default {DEFAULT_PEERS} or $CASCADE_BENCH_PEERS, when it exists)")
    p.add_argument("--quick", action="store_true", help="shipped sizes only, 2 training steps (a few minutes)")
    p.add_argument("--json", metavar="FILE", help="write the results here (default: docs/bench.json, not with --quick)")
    p.add_argument("--md", metavar="FILE", help="write the Markdown report here (default: next to --json)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the model family whose networks are timed")
    p.add_argument("--model", help="model folder for text -> 1024 (default: the shipped model, else `cascade init`)")
    p.add_argument("--threads", type=int, help="torch threads for every implementation (default: all cores)")
    p.add_argument("--repeats", type=int,
                   help="timing rounds per network, each timing every mode and implementation once (default 9)")
    p.add_argument("--train-steps", type=int, help="timed training steps per implementation (default 5; quick 2)")
    p.add_argument("--sizes", help="comma-separated: shipped,base (default both; quick: shipped)")
    p.add_argument("--networks", help="comma-separated subset of prior,decoder,sr256,sr1024")
    p.add_argument("--compile", action="store_true",
                   help="also time every implementation under torch.compile (the best precision, channels-last; "
                        "each network compiles once, ~1 min here)")
    p.add_argument("--no-prepack", action="store_true",
                   help="time cascade's bf16 modes without oneDNN weight prepacking (its pipeline prepacks; "
                        "the peers never do): how much of the ratio is prepacking")
    p.add_argument("--no-train", action="store_true", help="skip the training comparison")
    p.add_argument("--no-e2e", action="store_true", help="skip text -> 1024")
    p.add_argument("--note", default="", help="a line about the conditions (e.g. what else was running)")
    p.add_argument("--silent", action="store_true", help="no progress lines on stderr")


def cmd_bench(args: argparse.Namespace) -> None:
    from .cli import CliError

    try:
        result = run(args)
    except BenchError as e:
        raise CliError(str(e)) from None
    json_path = Path(args.json) if args.json else (None if args.quick else REPO / "docs" / "bench.json")
    md_path = Path(args.md) if args.md else (json_path.with_suffix(".md") if json_path else None)
    text = render_markdown(result)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(text)
    print(text)
    if json_path is not None:
        print(f"wrote {json_path}" + (f" and {md_path}" if md_path else ""))


def add_parser(sub: Any) -> None:
    """`cascade bench` (registered by cascade.cli when this module is present)."""
    p = sub.add_parser("bench", help="time cascade's networks against diffusers' and DALLE2-pytorch's at equal size",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def main(argv: Optional[list[str]] = None) -> int:
    """tools/bench.py: `cascade bench`'s options plus --setup-peers DIR."""
    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup-peers", metavar="DIR", help="make DIR a venv with the peers (torch as cascade's, "
                        "diffusers, dalle2-pytorch) and exit")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.setup_peers:
        python = setup_peers(Path(args.setup_peers))
        print(f"peers' environment ready: {python}\nnext: python tools/bench.py --peers {args.setup_peers}")
        return 0
    from .cli import CliError

    try:
        cmd_bench(args)
    except CliError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["add_parser", "main", "run", "setup_peers", "summarize", "render_markdown"]
