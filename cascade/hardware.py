"""What the device can do fast: bf16 autocast only pays where the hardware has bf16 arithmetic,
and pays more with the weights already in bf16."""

from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Callable, Iterator

import torch


@functools.lru_cache(maxsize=None)
def _cpu_native_bf16() -> bool:
    # AMX tiles (Sapphire Rapids and later) or AVX-512 BF16 (Cooper Lake, Zen 4). Without them
    # (AVX2 CPUs such as Zen 3) oneDNN emulates bf16: a 2048² matmul measured ~100× slower than fp32.
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` runs bf16 matmuls and convolutions natively (so bf16 autocast is faster than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_native_bf16()
    return device.type in ("xpu", "hpu")


def describe_cpu() -> str:
    """One line for logs and benchmark reports: the CPU's vector capability and whether bf16 is native."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability}, bf16 {'native' if _cpu_native_bf16() else 'emulated (slow)'}"


@contextlib.contextmanager
def bf16_weights(module: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within: `module`'s convolution and linear weights (and biases) held in bf16, restored after.

    For a network run under bf16 autocast, which casts these tensors to bf16 at every call
    anyway: the outputs are bit for bit the same. It saves the casts, which autocast does not
    cache under `torch.inference_mode` (the samplers' mode): 5–11% of a shipped decoder
    evaluation (session 17, two interleaved runs), its 17.7M weights read and written again at
    every step. Modules with a true `hold_fp32` attribute keep theirs (`stages.common.EmbeddingLinear`,
    which computes in fp32 anyway). Outside autocast the
    network would see bf16 weights and fp32 inputs: use it only around autocast regions.
    """
    saved = []
    if enabled:
        with torch.no_grad():
            for m in module.modules():
                conv_or_linear = isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))
                if conv_or_linear and not getattr(m, "hold_fp32", False):
                    for p in (m.weight, m.bias):
                        if p is not None and p.dtype == torch.float32:
                            saved.append((p, p.data))
                            p.data = p.data.to(torch.bfloat16)
    try:
        yield
    finally:
        for p, data in saved:
            p.data = data


@functools.lru_cache(maxsize=None)
def onednn_prepacking_available() -> bool:
    """Whether this torch exposes oneDNN's prepacked convolution and linear (the ops inductor's
    weight-prepacking pass emits; private, so probed rather than assumed)."""
    try:
        ops = torch.ops.mkldnn
        return torch.backends.mkldnn.is_available() and all(
            hasattr(ops, name) for name in ("_convolution_pointwise", "_reorder_convolution_weight",
                                            "_linear_pointwise", "_reorder_linear_weight"))
    except (AttributeError, RuntimeError):
        return False


def _bf16_autocast_on(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


# layer -> (its master weights' identity, {input shape (None for a linear): (packed weight, bf16 bias)}).
# The packs outlive a context: a pipeline that draws image after image reorders its weights once.
_PACKS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, dict]]" = weakref.WeakKeyDictionary()
_SHAPES_KEPT = 2  # per convolution: the newest input shapes' packs (a batch size, a tile size)


def _identity(m: torch.nn.Module) -> tuple:
    """Which weights `m` holds: its weight and bias tensors (by weak reference: a replaced parameter,
    even one at a reused address, is another), their storage and version (a weight changed in place,
    reloaded, trained, cast or moved has another). Packs made for another identity are dropped."""
    return tuple(None if p is None else (weakref.ref(p), p.data_ptr(), p._version, p.dtype)
                 for p in (m.weight, m.bias))


def _same_identity(a: tuple, b: tuple) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and x[0]() is not None
                                             and x[0]() is y[0]() and x[1:] == y[1:]) for x, y in zip(a, b))


def _prepacked_forward(m: torch.nn.Module, packs: dict, count: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`m`'s forward under CPU bf16 autocast on its weights reordered once into oneDNN's blocked
    layout (per input shape, for a convolution), instead of at every call; elsewhere its own."""
    ops, bf16 = torch.ops.mkldnn, torch.bfloat16
    conv = isinstance(m, torch.nn.Conv2d)
    geometry = (list(m.padding), list(m.stride), list(m.dilation), m.groups) if conv else ()

    def forward(x: torch.Tensor) -> torch.Tensor:
        dense = x.is_contiguous() or (conv and x.is_contiguous(memory_format=torch.channels_last))
        if not (dense and _bf16_autocast_on(x)) or (torch.is_grad_enabled() and m.weight.requires_grad) or x.dim() < 2:
            return type(m).forward(m, x)
        key = tuple(x.shape) if conv else None
        if key not in packs:
            if len(packs) >= _SHAPES_KEPT:
                del packs[next(iter(packs))]
            w = m.weight.detach().to(bf16)
            packs[key] = (ops._reorder_convolution_weight(w, *geometry, list(x.shape)) if conv
                          else ops._reorder_linear_weight(w, None),
                          None if m.bias is None else m.bias.detach().to(bf16))
        weight, bias = packs[key]
        count[0] += 1
        if conv:
            return ops._convolution_pointwise(x.to(bf16), weight, bias, *geometry, "none", [], "")
        return ops._linear_pointwise(x.to(bf16), weight, bias, "none", [], "")

    return forward


@contextlib.contextmanager
def onednn_prepacked(module: torch.nn.Module, enabled: bool = True) -> Iterator[list[int]]:
    """Within: `module`'s Conv2d and Linear layers, when called under CPU bf16 autocast without
    autograd, run oneDNN's convolution and inner product on weights reordered into its blocked
    layout once, as inductor's weight prepacking (`freezing`) does for a compiled graph and IPEX's
    `optimize` for an eager one; eager PyTorch reorders every weight at every call. The same
    kernels on the same bf16 operands: the outputs equal autocast's (bit for bit on this AMX Xeon;
    tests/test_hardware.py). Elsewhere (grad, fp32, another device, a torch without these ops) a
    layer runs its own forward.

    The packs are kept with the layer for the next context (per convolution, for its newest two
    input shapes) as long as its weights are the same tensors at the same version; enter this
    before `bf16_weights`, whose bf16 copies are new tensors every time. Reordering is slow next
    to a call (the shipped decoder's 136 layers: ~0.1 s, against ~7 ms saved per evaluation of
    its 17.7M weights; the SR networks save 0-3%), so the pipeline prepacks the decoder only.
    Yields a one-element list counting the prepacked calls. Layers with `hold_fp32`, subclasses
    with their own forward and non-zero padding modes are left alone; so is a layer whose forward
    is already replaced (an outer context's packs serve)."""
    count = [0]
    patched = []
    if enabled and onednn_prepacking_available():
        for m in module.modules():
            kind = type(m)
            eligible = ((kind is torch.nn.Conv2d and isinstance(m.padding, tuple) and m.padding_mode == "zeros")
                        or kind is torch.nn.Linear)
            if eligible and not getattr(m, "hold_fp32", False) and "forward" not in m.__dict__:
                identity = _identity(m)
                held = _PACKS.get(m)
                if held is None or not _same_identity(held[0], identity):
                    held = _PACKS[m] = (identity, {})
                m.forward = _prepacked_forward(m, held[1], count)
                patched.append(m)
    try:
        yield count
    finally:
        for m in patched:
            del m.forward


@contextlib.contextmanager
def bf16_held(module: torch.nn.Module, enabled: bool = True, prepack: bool = False) -> Iterator[None]:
    """Within: `module`'s weights held in bf16 (`bf16_weights`) and, with `prepack`, prepacked for oneDNN
    (`onednn_prepacked`, entered first: its packs are kept against the fp32 weights, not the bf16 copies)."""
    with onednn_prepacked(module, enabled=enabled and prepack), bf16_weights(module, enabled=enabled):
        yield


@contextlib.contextmanager
def bf16_autocast(device_type: str, module: torch.nn.Module, enabled: bool = True,
                  hold_weights: bool = True, prepack: bool = False) -> Iterator[None]:
    """Run `module` under bf16 autocast (when `enabled`) with its weights held in bf16 meanwhile
    (`bf16_held`; not with `hold_weights=False`, e.g. for a torch.compile'd module, whose graphs
    would recompile for the other dtype), and with `prepack` on weights prepacked for oneDNN
    (`onednn_prepacked`: cascade's pipeline; the bench's peers run without)."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled), \
            bf16_held(module, enabled=enabled and hold_weights, prepack=prepack):
        yield


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: Linux's VmHWM, the high-water mark of the process's
    own memory since it started its program. Not `getrusage`'s ru_maxrss, which on Linux a child
    inherits from its parent across fork and exec (a small child of a 2 GB process reports 2 GB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
