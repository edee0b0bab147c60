"""Measured matmul peak of this device, the denominator of MFU.

A vendor's datasheet peak means little on a shared laptop CPU, so MFU here is reported against
what a large fp32 (CPU) or bf16 (CUDA) matmul actually reaches on this machine, measured once
per process (about half a second).
"""

from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=4)
def matmul_peak_flops(device_type: str, n: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of an n x n matmul, best of repeated timings over about `seconds`."""
    device = torch.device(device_type)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for i in range(1000):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / 4
        best = min(best, dt) if i else best  # the first call warms up
        if time.perf_counter() > deadline and i >= 2:
            break
    return 2 * n**3 / best
