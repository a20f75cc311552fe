"""The measured matmul peak: what MFU is measured against on the CPU (and checked on a GPU).

Run:  .venv/bin/python -m benchmarks.peak [--threads N] [--device cpu|cuda]

A square matmul (2048 x 2048 by default) in fp32 and in bf16, at the torch thread count the
process is configured with; the fastest of the repeats within ~1 s is the peak (2 n^3 FLOPs a
matmul). On this kind of machine (AVX-512 BF16, 2 threads) bf16 runs ~2.8x fp32 (the issue
measured 377 against 134 GFLOP/s). MFU = a model's training FLOPs per second (flops_per_token x
tokens/s) over this peak in the precision it trained in.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import Row

SIZE = 2048


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    dtype: torch.dtype, device: torch.device | None = None, n: int = SIZE, seconds: float = 1.0
) -> float:
    """FLOP/s of the fastest n x n matmul in `dtype` on `device` over ~`seconds` (at least 3).

    On the CPU a matmul's time is the lesser of its wall time and its CPU time per thread: on
    a shared machine a thread that was descheduled did no work meanwhile, so the peak stays
    the CPU's own rather than the share another job left it."""
    device = device or torch.device("cpu")
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):  # warm-up: kernel selection, caches
        a @ b
    _sync(device)
    threads = torch.get_num_threads()
    best, runs, started = float("inf"), 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        wall, cpu = time.perf_counter(), time.process_time()
        a @ b
        _sync(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best = min(best, wall if device.type == "cuda" else min(wall, cpu / threads))
        runs += 1
    return 2 * n**3 / best


def peaks(device: torch.device) -> dict[str, float]:
    """{"fp32": FLOP/s, "bf16": FLOP/s} measured on `device` (CUDA: bf16 only)."""
    dtypes = (
        {"bf16": torch.bfloat16}
        if device.type == "cuda"
        else {
            "fp32": torch.float32,
            "bf16": torch.bfloat16,
        }
    )
    return {name: matmul_peak(dtype, device) for name, dtype in dtypes.items()}


def peak_rows(measured: dict[str, float], device: torch.device) -> list[Row]:
    """Informational rows: the measured peaks MFU is taken against."""
    where = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return [
        Row(
            f"matmul peak {name} ({where})",
            "GFLOP/s",
            None,
            flops / 1e9,
            "",
            0.0,
            note=f"{SIZE}x{SIZE} matmul, fastest over ~1 s{threads}: the MFU denominator",
            on_ratio=False,
        )
        for name, flops in measured.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name, flops in peaks(device).items():
        print(
            f"{args.device} {name} {SIZE}^2 matmul: {flops / 1e9:,.0f} GFLOP/s "
            f"({torch.get_num_threads()} threads)"
        )


if __name__ == "__main__":
    main()
