"""pretrain stage: train the GPT on the tokenized corpus (causal LM).

Batches are random windows of `block_size + 1` tokens, a pure function of (seed, step,
micro-step). The final evaluation reads every val token once (non-overlapping windows) and
reports loss, perplexity and bits per byte, next to a unigram baseline (train-split token
frequencies, add-one smoothed) on the same tokens. A killed run resumes from out/pretrain-resume.

    python -m tasks.pretrain
    torchrun --nproc_per_node=2 -m tasks.pretrain   # DDP: the global batch is 2 x batch_size
Writes out/pretrain/ (model.safetensors, config.json, tokenizer.json, samples.txt),
metrics/pretrain.json and plots/pretrain/{train,val}.csv.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

from model.generation import generate
from model.gpt import GPT, GPTConfig
from model.objectives import mask_generator, mask_tokens
from tasks import distributed, registry, tracking
from tasks.checkpoint import save_checkpoint
from tasks.common import log, resolve_device, run_stage, seed_everything
from tasks.hardware import matmul_peak_flops
from tasks.io import METRICS, OUT, PLOTS, write_json, write_text
from tasks.params import load_params
from tasks.tokenizer import OUT_DIR as TOKENIZER_DIR
from tasks.tokenizer import load_tokenizer, load_tokens
from tasks.training import (
    Loop,
    fingerprint,
    fit,
    make_optimizer,
    peek_resume,
    resume,
    speed_summary,
)

OUT_DIR, RESUME_DIR = OUT / "pretrain", OUT / "pretrain-resume"


def random_windows(tokens: np.ndarray, n: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """`n` windows of T + 1 consecutive tokens at random offsets: (n, T + 1) int64."""
    if len(tokens) <= T + 1:
        raise ValueError(f"only {len(tokens)} tokens; block_size {T} needs more than {T + 1}")
    starts = rng.integers(0, len(tokens) - T - 1, size=n)
    return np.stack([tokens[s : s + T + 1] for s in starts]).astype(np.int64)


def to_xy(windows: np.ndarray, device, masking=None, key=()) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.from_numpy(windows).to(device, non_blocking=True)
    if masking is not None:  # masked LM: corrupt the first T tokens, predict the selected ones
        return masking(w[:, :-1].contiguous(), key)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # inputs (B, T), targets (B, T)


def make_masking(params, tok):
    """None for the causal objective; for the masked one, a function (inputs (B, T), key) ->
    (inputs, targets) applying BERT's corruption with a generator seeded by (seed, *key), so a
    batch (and every evaluation) gets the same mask on every run. Special tokens are never
    selected, and random replacements are ordinary ids (special ids come last)."""
    p = params.pretrain
    if p.objective == "causal":
        return None
    specials = sorted(tok.special_tokens.values())

    def masking(w: torch.Tensor, key) -> tuple[torch.Tensor, torch.Tensor]:
        gen = mask_generator(params.seed, *key)
        return mask_tokens(w, tok.mask_id, specials[0], gen, p.mask_prob, specials)

    return masking


@torch.no_grad()
def sampled_val_loss(
    model, val: np.ndarray, n_batches: int, B: int, T: int, seed: int, device, masking=None
):
    """Mean loss on a fixed random subset of val windows (and masks: the same at every eval)."""
    model.eval()
    rng = np.random.default_rng([seed, 7])
    windows = [random_windows(val, B, T, rng) for _ in range(n_batches)]
    # under DDP each rank scores its share of the batches; the sums make the same mean
    losses = [
        model(*to_xy(w, device, masking, (7, i)))[1].item()
        for i, w in distributed.shard(list(enumerate(windows)))
    ]
    total, count = distributed.all_reduce_sums([sum(losses), len(losses)])
    return total / count


@torch.no_grad()
def full_val_loss(
    model, val: np.ndarray, T: int, B: int, device, masking=None
) -> tuple[float, int, np.ndarray]:
    """Sum of nats over every val token but the first, their count and their ids (masked
    objective: over the selected tokens, with a fixed mask per window).

    Under DDP each rank scores its own share of the windows (each window on exactly one rank);
    the caller all-reduces the sums.
    """
    model.eval()
    starts = distributed.shard(list(range(0, len(val) - 1, T)))
    total, targets = 0.0, []
    for i in range(0, len(starts), B):
        chunk = [val[s : s + T + 1].astype(np.int64) for s in starts[i : i + B]]
        same = [c for c in chunk if len(c) == T + 1]
        batches = ([np.stack(same)] if same else []) + [c[None] for c in chunk if len(c) != T + 1]
        for j, w in enumerate(batches):
            x, y = to_xy(w, device, masking, (8, starts[i], j))  # the same on any rank
            logits, _ = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            targets.append(y[y != -100].cpu().numpy())  # -100: not a target (masked objective)
    targets = np.concatenate(targets) if targets else np.zeros(0, np.int64)  # rank had no window
    return float(total), len(targets), targets


def unigram_nats(train: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[targets].sum())


def token_byte_lengths(tok) -> np.ndarray:
    lengths = np.array([len(tok.token_bytes(i)) for i in range(tok.vocab_size)], dtype=np.int64)
    lengths[list(tok.special_tokens.values())] = 0  # separators carry no text
    return lengths


def final_metrics(model, tok, train, val, params, device) -> dict:
    T, B = params.model.block_size, params.pretrain.batch_size
    nats, n, targets = full_val_loss(model, val, T, B, device, make_masking(params, tok))
    n_bytes = int(token_byte_lengths(tok)[targets].sum())
    uni = unigram_nats(train, targets, tok.vocab_size)
    nats, n, n_bytes, uni = distributed.all_reduce_sums([nats, n, n_bytes, uni])
    n = int(n)
    return {
        "val_loss": nats / n,
        "val_perplexity": math.exp(nats / n),
        "val_bits_per_byte": nats / math.log(2) / n_bytes,
        "unigram_loss": uni / n,
        "unigram_bits_per_byte": uni / math.log(2) / n_bytes,
        "val_tokens": n,
    }


def write_samples(model, tok, p, seed: int) -> str:
    prompts = [tok.encode(s) for s in p.sample_prompts]
    outs = generate(
        model,
        prompts,
        p.sample_tokens,
        temperature=p.sample_temperature,
        top_k=p.sample_top_k,
        eos_id=tok.eot_id,
        seed=seed,
    )
    texts = [tok.decode(a + b) for a, b in zip(prompts, outs, strict=True)]
    return "\n\n".join(f"--- sample {i + 1}\n{t}" for i, t in enumerate(texts)) + "\n"


def write_plots(history: dict) -> None:
    for name in ("train", "val"):
        rows = "\n".join(f"{s},{v:.6f}" for s, v in history[name])
        write_text(PLOTS / "pretrain" / f"{name}.csv", f"step,loss\n{rows}\n")


def main() -> None:
    params = load_params()
    with distributed.session(resolve_device(params.device)) as dist:
        train_model(params, dist)


def train_model(params, dist: distributed.Dist) -> None:
    """The stage body on one rank (the only rank without torchrun)."""
    p, device = params.pretrain, dist.device
    tok, train, val = load_tokenizer(), load_tokens("train"), load_tokens("val")
    config = GPTConfig(vocab_size=tok.vocab_size, **params.model.model_dump())
    tok_hash = hashlib.sha256((TOKENIZER_DIR / "tokenizer.json").read_bytes()).hexdigest()
    world = dist.world_size  # the global batch is world x batch_size x grad_accum
    fp = fingerprint(
        params.model.model_dump(), p.model_dump(), params.seed, tok_hash, len(train), world
    )
    meta = peek_resume(RESUME_DIR, fp)
    run_params = {
        "model": params.model.model_dump(),
        "pretrain": p.model_dump(),
        "seed": params.seed,
        "vocab_size": tok.vocab_size,
    }
    with tracking.stage_run("pretrain", run_params, meta and meta["run_id"]) as run_id:
        seed_everything(params.seed)
        model = GPT(config).to(device)
        net = distributed.wrap(model, dist, find_unused=config.n_expert > 0)  # trains; model evals
        distributed.seed_rank(params.seed)
        optimizer = make_optimizer(model, p)
        B, T = p.batch_size, config.block_size
        masking = make_masking(params, tok)  # None for the causal objective
        loop = Loop(
            stage="pretrain",
            batch=lambda step, micro: to_xy(
                random_windows(train, B, T, np.random.default_rng([params.seed, step, micro])),
                device,
                masking,
                (step, micro),
            ),
            evaluate=lambda: {
                "val/loss": sampled_val_loss(
                    model, val, p.eval_batches, B, T, params.seed, device, masking
                )
            },
            resume_dir=RESUME_DIR,
            fingerprint=fp,
            run_id=run_id,
            tokens_per_step=B * T * p.grad_accum * dist.world_size,
            flops_per_token=model.flops_per_token(T),
            peak_flops=matmul_peak_flops(device.type) * dist.world_size,
        )
        start = resume(model, optimizer, loop) if meta else 0
        t0 = time.perf_counter()
        fit(net, optimizer, loop, p, device, start)
        finish(model, tok, train, val, params, loop, device, time.perf_counter() - t0)
    if dist.is_main:
        shutil.rmtree(RESUME_DIR, ignore_errors=True)


def finish(model, tok, train, val, params, loop: Loop, device, seconds: float) -> None:
    p = params.pretrain
    metrics = final_metrics(model, tok, train, val, params, device)  # collective under DDP
    if not distributed.is_main():
        return  # rank 0 writes the checkpoint, metrics and plots
    tracking.log_metrics(
        {f"val/{k.removeprefix('val_')}": v for k, v in metrics.items()}, step=p.max_steps
    )
    speed = speed_summary(loop)
    metrics |= speed | {
        "params": model.num_params(non_embedding=False),
        "params_non_embedding": model.num_params(non_embedding=True),
        "peak_gflops": loop.peak_flops / 1e9,
        "steps": p.max_steps,
        "tokens_seen": p.max_steps * loop.tokens_per_step,
        "train_seconds": seconds,
    }
    metrics = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
    save_checkpoint(
        OUT_DIR,
        model,
        TOKENIZER_DIR / "tokenizer.json",
        {"stage": "pretrain", "objective": p.objective, "step": p.max_steps},
    )
    samples = (
        write_samples(model, tok, p, params.seed)
        if p.objective == "causal"
        else "(masked LM: a bidirectional model does not generate left to right; no samples)\n"
    )
    write_text(OUT_DIR / "samples.txt", samples)
    write_json(METRICS / "pretrain.json", metrics)
    write_plots(loop.history)
    tracking.log_metrics({k: v for k, v in speed.items()})
    for path in (OUT_DIR / "samples.txt", OUT_DIR / "config.json", METRICS / "pretrain.json"):
        tracking.log_artifact(path)
    registry.register_checkpoint(OUT_DIR, registry.BASE_MODEL, tags={"step": p.max_steps})
    log.info(
        "pretrain: val loss %.4f (unigram %.4f), %.3f bits/byte, %.0f tok/s, MFU %.1f%%",
        metrics["val_loss"],
        metrics["unigram_loss"],
        metrics["val_bits_per_byte"],
        metrics["tokens_per_s"],
        100 * metrics["mfu"],
    )
    log.info("pretrain samples:\n%s", samples)


if __name__ == "__main__":
    run_stage(main)
