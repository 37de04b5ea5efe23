"""What the device can do fast: bf16 autocast only pays where the hardware has bf16 arithmetic."""

from __future__ import annotations

import functools

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
