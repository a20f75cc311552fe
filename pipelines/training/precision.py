"""Mixed precision: bf16 autocast on CUDA always, on the CPU where it pays.

A CPU with native bf16 (AVX-512 BF16 or AMX) runs bf16 matmuls ~2-3x faster than fp32 (measured
here: 377 against 134 GFLOP/s for a 2048^2 matmul on 2 threads); without it bf16 is emulated
and slower than fp32, so `auto` turns CPU autocast on only where the CPU has it. Autocast keeps
the weights, the optimizer and the loss's reductions in fp32 (torch's autocast op lists), so a
run's losses stay within a small tolerance of fp32 ones (tests/pipelines/test_precision.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

CPU_AUTOCAST = ("auto", "on", "off")
CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU: torch's own probe, else the kernel's CPU flags."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    with contextlib.suppress(Exception):
        if probe is not None and (probe() or (amx is not None and amx())):
            return True
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(cpuinfo.read_text().split())
        return any(flag in flags for flag in CPU_FLAGS)
    return False


def cpu_autocast_active(setting: str, device: torch.device) -> bool:
    """Whether training on `device` under `compute.cpu_autocast: setting` autocasts to bf16 on
    the CPU (`on` forces it, `off` never, `auto` where the CPU has native bf16)."""
    if device.type != "cpu" or setting == "off":
        return False
    return setting == "on" or cpu_has_bf16()


def autocast(device: torch.device, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass: always on CUDA, on the CPU when `cpu_bf16`."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16 and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
