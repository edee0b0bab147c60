"""Pretraining objectives: masked-LM corruption (BERT), masked losses, and a tiny causal-vs-masked
comparison.

Masked LM (Devlin et al., 2019): each position is selected with probability `select_prob`
(15%); a selected token is replaced by the mask token with probability 0.8, by a uniform random
token with probability 0.1, and kept with probability 0.1; the model (bidirectional attention,
`GPTConfig(causal=False)`) predicts the original token at selected positions only (targets are
-100 elsewhere). Positions holding an excluded id (special or padding tokens) are never selected.
Random replacements are drawn from ids [0, n_random): pass the number of ordinary ids so that
special tokens are never injected (our tokenizer puts special tokens last).
Leaves out: whole-word masking, span corruption, next-sentence prediction.
Tests: `pytest tests/test_objectives.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.gpt import GPT, GPTConfig

IGNORE = -100  # the target value cross-entropy skips


def mask_tokens(
    idx: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    select_prob: float = 0.15,
    exclude_ids: list[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """idx (B, T) -> (inputs (B, T), targets (B, T)): BERT's 80/10/10 corruption of a
    `select_prob` share of positions; targets hold the original id there and -100 elsewhere.

    `vocab_size`: random replacements are uniform in [0, vocab_size). Random numbers come from
    `generator` (on its own device, CPU by default), so a seeded generator gives the same mask on
    any device. At least one eligible position is selected per call, so the loss is defined.
    """
    if not 0 < select_prob <= 1:
        raise ValueError(f"select_prob: expected a value in (0, 1], got {select_prob}")
    shape, dev = idx.shape, (generator.device if generator is not None else "cpu")
    draw = torch.rand((3, *shape), generator=generator, device=dev).to(idx.device)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=dev).to(idx.device)
    eligible = torch.ones(shape, dtype=torch.bool, device=idx.device)
    if exclude_ids is not None and len(exclude_ids):
        excluded = torch.as_tensor(exclude_ids, dtype=idx.dtype, device=idx.device)
        eligible = ~torch.isin(idx, excluded)
    selected = (draw[0] < select_prob) & eligible
    if not selected.any() and eligible.any():  # tiny inputs: pick one eligible position
        selected.view(-1)[torch.argmax(draw[0].masked_fill(~eligible, -1.0)).item()] = True

    targets = torch.where(selected, idx, torch.full_like(idx, IGNORE))
    to_mask = selected & (draw[1] < 0.8)
    to_random = selected & ~to_mask & (draw[2] < 0.5)  # half of the remaining 20%
    inputs = torch.where(to_mask, torch.full_like(idx, mask_id), idx)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, targets


def mask_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator seeded from (seed, *parts): the same mask for the same batch, always."""
    mixed = seed
    for p in parts:
        mixed = (mixed * 1_000_003 + p) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


@torch.no_grad()
def masked_loss_sum(
    model: GPT,
    windows: torch.Tensor,
    mask_id: int,
    n_random: int,
    generator: torch.Generator,
    select_prob: float = 0.15,
    exclude_ids: list[int] | None = None,
) -> tuple[float, int, torch.Tensor]:
    """Summed cross-entropy (nats) over the selected positions of `windows` (B, T), their count
    and their target ids (on the CPU)."""
    x, y = mask_tokens(windows, mask_id, n_random, generator, select_prob, exclude_ids)
    logits, _ = model(x)
    picked = y != IGNORE
    nats = F.cross_entropy(logits.float()[picked], y[picked], reduction="sum")
    return float(nats), int(picked.sum()), y[picked].cpu()


# ------------------------------------------------------------------------------ comparison


@torch.no_grad()
def position_losses(
    causal: GPT, masked: GPT, windows: torch.Tensor, mask_id: int, n_random: int, seed: int
) -> dict[str, float]:
    """Both models' loss (nats) on the SAME target tokens: the masked-LM selected positions
    (never the first, which the causal model cannot predict). The causal model predicts token t
    from tokens < t (uncorrupted); the masked model from the corrupted window on both sides."""
    x, y = mask_tokens(windows, mask_id, n_random, mask_generator(seed, 1))
    y[:, 0] = IGNORE
    picked = y != IGNORE
    masked_logits, _ = masked(x)
    causal_logits, _ = causal(windows[:, :-1])  # logits at t-1 predict token t
    shifted = torch.cat([causal_logits[:, :1], causal_logits], dim=1)  # row t predicts t
    return {
        "masked_model_loss": float(F.cross_entropy(masked_logits.float()[picked], y[picked])),
        "causal_model_loss": float(F.cross_entropy(shifted.float()[picked], y[picked])),
        "positions": int(picked.sum()),
    }


def train_tiny(
    config: GPTConfig,
    tokens: torch.Tensor,
    objective: str,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    mask_id: int | None = None,
    n_random: int | None = None,
) -> tuple[GPT, list[float]]:
    """Train a small GPT on a 1-D token tensor with AdamW at a constant lr; returns the model and
    its training loss per step. objective: 'causal' (next token) or 'masked' (needs mask_id)."""
    if objective not in ("causal", "masked"):
        raise ValueError(f"objective: expected 'causal' or 'masked', got {objective!r}")
    if (objective == "masked") == config.causal:
        raise ValueError(f"objective {objective!r} needs GPTConfig(causal={objective != 'masked'})")
    torch.manual_seed(seed)
    model, gen = GPT(config), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    T, losses = config.block_size, []
    for _ in range(steps):
        windows = random_windows(tokens, batch_size, T + 1, gen)
        if objective == "causal":
            x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        else:
            x, y = mask_tokens(windows[:, :-1], mask_id, n_random, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def random_windows(tokens: torch.Tensor, n: int, length: int, gen: torch.Generator):
    """(n, length) windows of consecutive tokens at random offsets."""
    if len(tokens) <= length:
        raise ValueError(f"only {len(tokens)} tokens; windows of {length} need more")
    starts = torch.randint(len(tokens) - length, (n,), generator=gen)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])


def compare_causal_masked(
    train: torch.Tensor,
    val: torch.Tensor,
    config: GPTConfig,
    mask_id: int,
    n_random: int,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    eval_windows: int = 32,
) -> dict:
    """Train the same architecture twice on `train` (1-D token ids) -- causal attention with the
    next-token objective, bidirectional with the masked objective -- and compare on `val`.

    Returns each model's own objective loss (not comparable: different tasks, and the masked one
    is measured on 15% of positions) and both models' loss on the same masked positions (the
    comparable number: bidirectional context should make the masked model's lower), plus the
    final training losses. Sizes: config.block_size + 1 <= len(val).
    """
    causal_cfg = GPTConfig(**{**config.to_dict(), "causal": True})
    masked_cfg = GPTConfig(**{**config.to_dict(), "causal": False})
    args = (steps, batch_size, lr, seed, mask_id, n_random)
    causal, causal_curve = train_tiny(causal_cfg, train, "causal", *args)
    masked, masked_curve = train_tiny(masked_cfg, train, "masked", *args)

    T = config.block_size
    windows = random_windows(val, eval_windows, T + 1, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        _, causal_own = causal(windows[:, :-1], windows[:, 1:].contiguous())
        x, y = mask_tokens(windows[:, :-1], mask_id, n_random, mask_generator(seed, 2))
        _, masked_own = masked(x, y)
    same = position_losses(causal, masked, windows[:, :-1], mask_id, n_random, seed)
    return {
        "causal_next_token_loss": float(causal_own),
        "masked_selected_loss": float(masked_own),
        **{f"same_positions_{k}": v for k, v in same.items()},
        "causal_train_loss_last": causal_curve[-1],
        "masked_train_loss_last": masked_curve[-1],
        "uniform_loss": math.log(config.vocab_size),
    }
