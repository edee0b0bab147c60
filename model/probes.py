"""Probes for the classic transformer experiments: small, seeded measurements on tiny models.

What is here (pure torch, no files, no MLflow; tasks/experiments.py runs them and records):
- `train_tiny`: plain Adam at a constant lr for a few dozen steps, returning the loss curve
  (the shared training loop in tasks/training.py brings checkpoints, schedules and MLflow,
  which these seconds-long probes do not need);
- position distinguishability: a bidirectional model trained to output each token's position
  index (`position_batch`), and `distinct_positions`, which counts the positions a model can
  tell apart in a constant sequence (without positional encoding a bidirectional model is
  permutation-equivariant, so every position gets the same output);
- attention saturation: the maximum softmax weight of random queries and keys with and without
  the 1/sqrt(d) scaling (Vaswani et al. 2017, footnote 4), through model/attention.py's explicit
  path, and the same statistic in a trained model's attention maps;
- sampling entropy of next-token distributions against temperature, in bits;
- per-layer gradient norms (Pre-LN vs Post-LN, Xiong et al. 2020);
- `time_generate`: seconds to generate with or without the KV cache (the speedup experiment
  and bench/bench_kv_cache.py);
- the copy task (`copy_batch`): predict the token `distance` places back, which needs a
  receptive field of at least distance + 1 tokens; sliding-window attention with window w over
  n_layer layers reaches n_layer * (w - 1) tokens back.
Leaves out: anything that reads checkpoints or writes results (tasks/experiments.py).
Tests: `pytest tests/test_experiments.py`.
"""

import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from model.attention import attention_weights
from model.generation import generate

Batch = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------- training


def train_tiny(model, batch: Batch, steps: int, lr: float, seed: int) -> list[float]:
    """Adam at constant lr for `steps` steps on batch(generator) -> (x, y); the loss per step.

    Stops early (returning what it has, the last value non-finite) when the loss diverges.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = batch(gen)
        _, loss = model(x, y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of targets y (B, T) (-100 = ignored) that the model's argmax gets right."""
    model.eval()
    logits, _ = model(x)
    keep = y != -100
    return float((logits.argmax(dim=-1)[keep] == y[keep]).float().mean())


# ---------------------------------------------------------------------- positions


def position_batch(
    gen: torch.Generator, batch_size: int, T: int, vocab_size: int, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (B, T) and, as targets, each slot's position index 0..T-1."""
    x = torch.randint(0, vocab_size, (batch_size, T), generator=gen).to(device)
    y = torch.arange(T).expand(batch_size, T).contiguous().to(device)
    return x, y


@torch.no_grad()
def distinct_positions(model, T: int, token: int = 0, tol: float = 1e-4) -> float:
    """Fraction of position pairs (i < j) whose outputs differ on a sequence of one repeated
    token; 0 for a permutation-equivariant (bidirectional, no positional encoding) model."""
    model.eval()
    device = next(model.parameters()).device
    logits, _ = model(torch.full((1, T), token, dtype=torch.long, device=device))
    out = logits[0].float()  # (T, V)
    gaps = torch.cdist(out, out, p=float("inf"))  # (T, T) largest per-logit difference
    i, j = torch.triu_indices(T, T, offset=1)
    scale = out.abs().max().clamp(min=1e-12)
    return float((gaps[i, j] > tol * scale).float().mean())


def above_chance(acc: float, chance: float) -> float:
    """Accuracy rescaled so chance is 0 and perfect is 1 (clamped to [0, 1])."""
    return min(1.0, max(0.0, (acc - chance) / (1.0 - chance)))


# ---------------------------------------------------------------------- attention


def max_weight_random(d: int, T: int, n: int, scaled: bool, seed: int) -> float:
    """Mean over query rows of the largest softmax weight, for q, k ~ N(0, 1) of size d.

    q k^T has variance d, so without 1/sqrt(d) the logits spread by sqrt(d) and the softmax
    puts nearly all weight on one key; with it they spread by about 1.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 1, T, d, generator=gen)
    k = torch.randn(n, 1, T, d, generator=gen)
    if not scaled:
        q = q * math.sqrt(d)  # attention_weights multiplies by 1/sqrt(d): undo it
    weights = attention_weights(q, k)  # (n, 1, T, T), bidirectional
    return float(weights.max(dim=-1).values.mean())


def max_weight_maps(maps: list[torch.Tensor], min_keys: int) -> list[float]:
    """Per layer, the mean largest weight of query rows that see at least `min_keys` keys.

    maps: (B, H, T, S) causal weights per layer; row t sees t + 1 keys (rows with few keys have
    a large maximum whatever the scaling, so they are left out).
    """
    out = []
    for w in maps:
        rows = w[:, :, min_keys - 1 :]  # (B, H, T', S)
        out.append(float(rows.max(dim=-1).values.mean()))
    return out


# ---------------------------------------------------------------------- sampling


def entropy_bits(logits: torch.Tensor, temperature: float) -> float:
    """Mean entropy in bits of softmax(logits / temperature) over the rows of logits (N, V)."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    logp = F.log_softmax(logits.double() / temperature, dim=-1)
    nats = -(logp.exp() * logp).sum(dim=-1)
    return float(nats.mean() / math.log(2))


# ---------------------------------------------------------------------- gradients


def layer_grad_norms(model, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """L2 norm of the loss gradient over each block's parameters, first layer first."""
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    norms = []
    for block in model.blocks:
        grads = [p.grad.flatten() for p in block.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).norm()))
    model.zero_grad(set_to_none=True)
    return norms


# ---------------------------------------------------------------------- copy task


def copy_batch(
    gen: torch.Generator, batch_size: int, T: int, vocab_size: int, distance: int, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (B, T); target at t is the token at t - distance (-100 for t < distance)."""
    if not 0 < distance < T:
        raise ValueError(f"distance: expected 0 < distance < T={T}, got {distance}")
    x = torch.randint(0, vocab_size, (batch_size, T), generator=gen)
    y = torch.full_like(x, -100)
    y[:, distance:] = x[:, :-distance]
    return x.to(device), y.to(device)


def reach(window: int | None, n_layer: int, T: int) -> int:
    """How many tokens back the last layer can see: n_layer * (window - 1), or T - 1 when full."""
    return T - 1 if window is None else min(T - 1, n_layer * (window - 1))


# ---------------------------------------------------------------------- mixture of experts


def utilisation_summary(per_layer: list[list[float]]) -> dict[str, float]:
    """Smallest and largest expert share over every MoE layer, and the mean coefficient of
    variation of the shares (0 = perfectly balanced)."""
    shares = torch.tensor(per_layer, dtype=torch.float64)  # (n_layer, n_expert)
    cv = shares.std(dim=-1, unbiased=False) / shares.mean(dim=-1)
    return {
        "min_share": float(shares.min()),
        "max_share": float(shares.max()),
        "cv": float(cv.mean()),
    }


def time_generate(model, n_new: int, use_cache: bool, repeats: int) -> tuple[float, list[int]]:
    """Median seconds to generate n_new tokens from a one-token prompt, and the tokens."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(model, [[0]], n_new, seed=0, use_cache=use_cache)[0]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
