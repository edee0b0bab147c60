"""scaling-point stage: train one sweep point's GPT and record its loss, size and compute.

One DVC stage instance per entry of `scaling.points` (dvc.yaml `foreach`), so a point re-runs
only when its own params (or the shared `scaling.train`) change. The architecture is the GPT
default (RoPE, pre-LayerNorm, GELU, tied embeddings) at the point's n_layer / n_embd / n_head,
independent of the `model` section, so tuning the pretrain model never invalidates the sweep.
Every point sees the same batches (same seed), so loss differences come from size and tokens.

    python -m tasks.scaling_point <name>
Writes out/scaling/points/<name>.json and metrics/scaling/<name>.json (the same record).
Leaves out: resume (a point is short; a killed point re-runs from the start).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from model.gpt import GPT, GPTConfig
from tasks import tracking
from tasks.common import log, resolve_device, run_stage, seed_everything
from tasks.hardware import matmul_peak_flops
from tasks.io import METRICS, OUT, write_json
from tasks.params import PretrainParams, load_params
from tasks.pretrain import full_val_loss, random_windows, sampled_val_loss, to_xy
from tasks.tokenizer import load_tokenizer, load_tokens
from tasks.training import Loop, fit, make_optimizer, speed_summary

POINTS_DIR, POINT_METRICS = OUT / "scaling" / "points", METRICS / "scaling"


def point_params(params, name: str):
    if name not in params.scaling.points:
        known = sorted(params.scaling.points)
        raise ValueError(f"params.yaml: scaling.points has no point {name!r} (has {known})")
    return params.scaling.points[name]


def train_tokens(point, n_total: int, tokens_per_step: int) -> int:
    """D for the point, rounded up to whole steps: its `tokens`, or C / (6 N) for `flops`."""
    tokens = point.tokens if point.tokens is not None else point.flops / (6.0 * n_total)
    return max(1, math.ceil(tokens / tokens_per_step)) * tokens_per_step


def loop_params(t, point, steps: int) -> PretrainParams:
    """The shared training loop's settings for this point (no resume states: interval > steps)."""
    lr = point.lr or t.lr
    return PretrainParams(
        batch_size=t.batch_size,
        max_steps=steps,
        lr=lr,
        min_lr=lr * t.min_lr_ratio,
        warmup_steps=min(t.warmup_steps, steps // 2),
        weight_decay=t.weight_decay,
        eval_interval=max(1, steps // t.eval_points),
        eval_batches=t.eval_batches,
        checkpoint_interval=steps + 1,
        log_interval=max(1, steps // 10),
    )


def record(model, point, p: PretrainParams, T: int, val_loss: float, seconds: float) -> dict:
    """Loss, both parameter counts, tokens seen and training FLOPs (6ND plus attention)."""
    n, n_total = model.num_params(non_embedding=True), model.num_params(non_embedding=False)
    d = p.max_steps * p.batch_size * T
    attention = 12.0 * model.config.n_layer * model.config.n_embd * T  # per token (PaLM app. B)
    return {
        "n_layer": point.n_layer,
        "n_embd": point.n_embd,
        "n_head": point.n_head,
        "budget_flops": point.flops,  # null for a token-budget point
        "lr": p.lr,
        "val_loss": val_loss,
        "params": n_total,
        "params_non_embedding": n,
        "tokens": d,
        "steps": p.max_steps,
        "flops_6nd": 6.0 * n * d,  # Kaplan: non-embedding N
        "flops_6nd_total": 6.0 * n_total * d,  # with the tied embedding (= the head's matmul)
        "flops_attention": attention * d,
        "flops": model.flops_per_token(T, include_head=True) * d,
        "train_seconds": seconds,
    }


def train_point(params, name: str) -> dict:
    t, point = params.scaling.train, point_params(params, name)
    device, T = resolve_device(params.device), t.block_size
    tok, train, val = load_tokenizer(), load_tokens("train"), load_tokens("val")
    val = val[: t.val_tokens + 1]
    seed_everything(params.seed)
    config = GPTConfig(
        vocab_size=tok.vocab_size,
        block_size=T,
        n_layer=point.n_layer,
        n_head=point.n_head,
        n_embd=point.n_embd,
    )
    model = GPT(config).to(device)
    B = t.batch_size
    steps = train_tokens(point, model.num_params(non_embedding=False), B * T) // (B * T)
    p = loop_params(t, point, steps)
    run_params = {"point": name, "scaling_train": t.model_dump(), **point.model_dump()}
    with tracking.stage_run(f"scaling-point@{name}", run_params) as run_id:
        loop = Loop(
            stage=f"scaling-point@{name}",
            batch=lambda step, micro: to_xy(
                random_windows(train, B, T, np.random.default_rng([params.seed, step, micro])),
                device,
            ),
            evaluate=lambda: {
                "val/loss": sampled_val_loss(model, val, p.eval_batches, B, T, params.seed, device)
            },
            resume_dir=OUT / "scaling" / f".resume-{name}",  # never written (see loop_params)
            fingerprint="",
            run_id=run_id,
            tokens_per_step=B * T,
            flops_per_token=model.flops_per_token(T, include_head=True),
            peak_flops=matmul_peak_flops(device.type),
        )
        t0 = time.perf_counter()
        optimizer = make_optimizer(model, p)
        fit(model, optimizer, loop, p, device)
        seconds = time.perf_counter() - t0
        nats, count, _ = full_val_loss(model, val, T, B, device)
        result = record(model, point, p, T, nats / count, seconds) | speed_summary(loop)
        result["name"] = name
        tracking.log_metrics(
            {k: v for k, v in result.items() if isinstance(v, int | float) and v is not None},
            step=steps,
        )
    return result


def main() -> None:
    if len(sys.argv) != 2:
        raise ValueError("usage: python -m tasks.scaling_point <point name from scaling.points>")
    name = sys.argv[1]
    result = train_point(load_params(), name)
    write_json(POINTS_DIR / f"{name}.json", result)
    write_json(POINT_METRICS / f"{name}.json", result)
    log.info(
        "scaling-point %s: val loss %.4f | N %d (non-embedding %d) | D %d | %.2e FLOPs | %.1fs",
        name,
        result["val_loss"],
        result["params"],
        result["params_non_embedding"],
        result["tokens"],
        result["flops"],
        result["train_seconds"],
    )


if __name__ == "__main__":
    run_stage(main)
