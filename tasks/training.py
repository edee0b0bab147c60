"""The training loop shared by the training stages: AdamW, warmup + cosine, accumulation,
clipping, periodic eval, resumable checkpoints and one fixed progress line.

Resume is exact: batches are a pure function of (seed, step, micro-step), and the resume state
holds model, optimizer and RNG, so a killed run continued from its last checkpoint takes the
same steps as one that never stopped. A resume state is used only when its fingerprint (a hash
of everything that shapes the run: params, data, code version of the config) matches.
Under torchrun (DDP, see tasks/distributed.py) each rank reads its own micro-batch indices
(`global_micro`), so world_size ranks at grad_accum g take the same steps as one process at
grad_accum world_size * g; the loss is averaged over ranks before the NaN check (every rank stops
together) and only rank 0 writes resume states and logs.
Leaves out: mixed precision on CPU (bf16 matmul is 10-100x slower than fp32 on the CPUs we
target).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tasks import distributed, tracking
from tasks.checkpoint import STATE_META, load_state, save_state
from tasks.common import log


class NonFiniteLoss(ValueError):
    """Training produced NaN or inf; the last good resume state is kept on disk."""


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_optimizer(model: torch.nn.Module, p) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases or gains)."""
    params = [q for q in model.parameters() if q.requires_grad]
    groups = [
        {"params": [q for q in params if q.dim() >= 2], "weight_decay": p.weight_decay},
        {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0},
    ]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=p.lr, betas=(p.beta1, p.beta2), fused=fused)


def lr_at(step: int, p) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress = (step - p.warmup_steps) / max(1, p.max_steps - p.warmup_steps)
    return p.min_lr + 0.5 * (p.lr - p.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def peek_resume(path: Path, expected_fingerprint: str) -> dict | None:
    """The meta of a resume state that belongs to this run, else None (stale ones are ignored)."""
    file = path / STATE_META
    if not file.exists():
        return None
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: corrupt resume state ({e}); delete {path} to start over") from e
    if meta.get("fingerprint") != expected_fingerprint:
        log.info("resume state in %s is from other params or data; starting fresh", path)
        return None
    return meta


@dataclass
class Loop:
    """What a stage hands to `fit`."""

    stage: str
    batch: Callable[[int, int], tuple]  # (step, micro) -> (inputs, targets) on the device
    evaluate: Callable[[], dict[str, float]]  # -> {"val/loss": ...}
    resume_dir: Path
    fingerprint: str
    run_id: str
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float
    history: dict = field(default_factory=lambda: {"train": [], "val": [], "ms": []})


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, optimizer, loop: Loop, step: int, p, device) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, p)
    total = 0.0
    for micro in range(p.grad_accum):
        x, y = loop.batch(step, distributed.global_micro(micro, p.grad_accum))
        with distributed.no_sync(model, sync=micro == p.grad_accum - 1):
            with autocast(device):
                _, loss = model(x, y)
            # a sync point (and an all-reduce under DDP), needed for the NaN check
            value = distributed.mean_over_ranks(loss.item())
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    f"{loop.stage}: loss is {value} at step {step}; the last good checkpoint is "
                    f"in {loop.resume_dir} (lower lr or check the data)"
                )
            (loss / p.grad_accum).backward()
        total += value
    if p.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / p.grad_accum


def fit(model, optimizer, loop: Loop, p, device, start_step: int = 0) -> dict:
    """Train from `start_step` to `p.max_steps`; returns the history (train/val losses, ms)."""
    model.train()
    smooth, t_start = None, time.perf_counter()
    for step in range(start_step, p.max_steps):
        if step % p.eval_interval == 0:
            record_eval(model, loop, step)
        t0 = time.perf_counter()
        loss = train_step(model, optimizer, loop, step, p, device)
        dt = time.perf_counter() - t0
        loop.history["train"].append([step, loss])
        loop.history["ms"].append(dt * 1000)
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
        done = step + 1
        if done % p.log_interval == 0 or done == p.max_steps:
            log_progress(
                loop, p, step, smooth, dt, time.perf_counter() - t_start, done - start_step
            )
        if done % p.checkpoint_interval == 0 and done < p.max_steps and distributed.is_main():
            save_resume(model, optimizer, loop, done)
    return loop.history


def record_eval(model, loop: Loop, step: int) -> None:
    metrics = loop.evaluate()
    model.train()
    loop.history["val"].append([step, metrics["val/loss"]])
    tracking.log_metrics(metrics, step=step)
    log.info(
        "%s | step %d | %s",
        loop.stage,
        step,
        " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
    )


def save_resume(model, optimizer, loop: Loop, step: int) -> None:
    meta = {
        "step": step,
        "fingerprint": loop.fingerprint,
        "run_id": loop.run_id,
        "history": loop.history,
    }
    save_state(loop.resume_dir, model, optimizer, meta)


def resume(model, optimizer, loop: Loop) -> int:
    """Load the resume state into model and optimizer; return the step to continue from."""
    meta = load_state(loop.resume_dir, model, optimizer)
    loop.history = meta["history"]
    log.info("%s: resumed from step %d (%s)", loop.stage, meta["step"], loop.resume_dir)
    return meta["step"]


def log_progress(
    loop: Loop, p, step: int, smooth: float, dt: float, elapsed: float, steps_done: int
) -> None:
    total = p.max_steps
    tok_s = loop.tokens_per_step / dt
    mfu = loop.flops_per_token * tok_s / loop.peak_flops
    eta = elapsed / steps_done * (total - step - 1)
    fields = [
        f"{loop.stage} | step {step + 1}/{total} ({100 * (step + 1) / total:.1f}%)",
        f"loss {smooth:.4f}",
        f"lr {lr_at(step, p):.2e}",
        f"{dt * 1000:.0f} ms/step",
        f"{tok_s:,.0f} tok/s",
        f"MFU {100 * mfu:.1f}%",
        f"ETA {int(eta // 60)}m{int(eta % 60):02d}s",
    ]
    log.info(" | ".join(fields))
    recent = [loss for _, loss in loop.history["train"][-p.log_interval :]]
    tracking.log_metrics(
        {
            "train/loss": statistics.fmean(recent),
            "train/lr": lr_at(step, p),
            "train/tokens_per_s": tok_s,
            "train/mfu": mfu,
        },
        step=step + 1,
    )


def speed_summary(loop: Loop, skip: int = 3) -> dict[str, float]:
    """Median step time (the first steps warm up allocators and are skipped)."""
    ms = loop.history["ms"][skip:] or loop.history["ms"]
    median_ms = statistics.median(ms)
    tok_s = loop.tokens_per_step / (median_ms / 1000)
    return {
        "ms_per_step": median_ms,
        "tokens_per_s": tok_s,
        "mfu": loop.flops_per_token * tok_s / loop.peak_flops,
    }
