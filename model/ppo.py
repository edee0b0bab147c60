"""PPO for language models: the per-token pieces of RLHF, as pure tensor functions.

Shapes: every per-token tensor is (B, R), one row per rollout and one column per response
position (the action tokens); `mask` (B, R) is True on real response tokens and False on
padding, whatever side the padding is on. Nothing here reads padded positions: means, variances
and the GAE recursion run over real tokens only, and padded outputs are zero.

What is here: log-probs and entropy at the sampling temperature, masked mean / whitening, the
k1 and k3 KL estimators, reward shaping (per-token KL penalty + reward-model score on the last
real token + a penalty for responses that never end), a leave-one-out score baseline for
several responses per prompt, GAE, the clipped policy and value losses,
and fixed / adaptive KL controllers (Ziegler et al. 2019, "Fine-Tuning Language Models from
Human Preferences"). The recipe follows Huang et al. 2024, "The N+ Implementation Details of
RLHF with PPO".
Leaves out: rollouts, models and optimisers (tasks/ppo.py).
Tests: `pytest tests/test_ppo.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------- log-probs


def logprobs_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(target) under softmax(logits / temperature): logits (B, R, V), targets (B, R).

    The temperature must be the one the tokens were sampled at, or the ratio and the KL refer
    to a different policy from the one that acted.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy in nats of softmax(logits / temperature) per position: (B, R, V) -> (B, R)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def pack(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt + response rows for one forward pass.

    Returns tokens (B, T), attention_mask (B, T) (True on real tokens) and action_mask
    (B, T - 1): True at position t when token t + 1 is a response token, i.e. where the
    logits at t chose an action. Every response needs at least one token.
    """
    if any(not r for r in responses):
        raise ValueError("responses: every response needs at least one token")
    rows = [p + r for p, r in zip(prompts, responses, strict=True)]
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), T, dtype=torch.bool)
    action_mask = torch.zeros(len(rows), T - 1, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        tokens[b, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[b, : len(p) + len(r)] = True
        action_mask[b, len(p) - 1 : len(p) + len(r) - 1] = True
    return tokens.to(device), attention_mask.to(device), action_mask.to(device)


def sequence_logits(model, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits (B, T - 1, V) at the action positions of packed rows."""
    logits, _ = model(tokens, attention_mask=attention_mask)
    return logits[:, :-1]


# ---------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is True (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of x over the masked positions."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / std with mean and std over real positions only; padded positions are 0.

    shift_mean=False keeps the mean (scales only), as some recipes do for rewards.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the last True in mask (B, T) -> (B,) long; rows need one True.

    Works for left padding, right padding and gaps alike, since it never assumes where the
    padding is.
    """
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("mask: every row needs at least one real token")
    T = mask.shape[-1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=-1).values


# ---------------------------------------------------------------------- KL and rewards


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log p - log p_ref (unbiased; negative on single tokens)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate (r - 1) - log r with r = p_ref / p: unbiased and never negative
    (Schulman 2020, "Approximating KL divergence"); for logging."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


def shape_rewards(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    ended: torch.Tensor,
    kl_coef: float,
    no_end_penalty: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, R) and the score actually given (B,).

    Every real token gets -kl_coef * (log p - log p_ref); the last real token of each response
    also gets the reward-model score, minus `no_end_penalty` when the response has no
    end-of-turn token (`ended` False), so a policy cannot gain by never stopping.
    """
    mask = mask.bool()
    rewards = -kl_coef * kl_k1(logp, ref_logp) * mask
    given = scores.float() - no_end_penalty * (~ended.bool()).float()
    last = last_true_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += given
    return rewards, given


def leave_one_out(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each score minus the mean of the other scores of its group (B,) -> (B,): rows
    g * group_size .. (g + 1) * group_size - 1 answer the same prompt. The baseline does not
    depend on the row's own response, so the policy gradient stays unbiased, and it removes
    the part of the score that belongs to the prompt rather than the response (RLOO, Ahmadian
    et al. 2024), which a value model learns only slowly."""
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(f"leave_one_out: {scores.shape[0]} rows in groups of {group_size}")
    groups = scores.float().view(-1, group_size)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).view(-1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the real tokens of each row.

    Returns (advantages, returns), both (B, R) and zero on padding. Padded positions are
    skipped, not treated as steps: the successor of a real token is the next real token in its
    row, and the value after the last real token is 0 (the episode ends there).
    """
    mask = mask.bool()
    B, R = rewards.shape
    advantages = torch.zeros_like(rewards, dtype=torch.float32)
    next_value = torch.zeros(B, device=rewards.device)
    next_adv = torch.zeros(B, device=rewards.device)
    for t in reversed(range(R)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        real = mask[:, t]
        advantages[:, t] = torch.where(real, adv, 0.0)
        next_value = torch.where(real, values[:, t].float(), next_value)
        next_adv = torch.where(real, adv, next_adv)
    returns = (advantages + values) * mask
    return advantages, returns


# ---------------------------------------------------------------------- losses


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017), averaged over real tokens.

    Stats (detached): clip_frac (share of tokens where the clipped term was taken), approx_kl
    (k3 estimate of KL(old || new)) and the mean ratio.
    """
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * mean over real tokens of max((v - G)^2, (v_clipped - G)^2), where v_clipped stays
    within `clip` of the rollout's value: the element-wise max makes the update pessimistic."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_frac": masked_mean((err_clipped > err).float(), mask)}
    return loss, stats


# ---------------------------------------------------------------------- KL controllers


@dataclass
class FixedKLController:
    """A constant KL coefficient."""

    value: float

    def update(self, kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019: move the coefficient so the measured KL tracks `target`.

    Each update multiplies the coefficient by 1 + e * n_steps / horizon, where e is the
    relative error KL / target - 1 clipped to [-0.2, 0.2].
    """

    value: float
    target: float
    horizon: int

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(
    kind: str, init: float, target: float | None = None, horizon: int = 10000
) -> FixedKLController | AdaptiveKLController:
    if kind == "fixed":
        return FixedKLController(init)
    if kind == "adaptive":
        if target is None or not target > 0:
            raise ValueError(f"kl_target: an adaptive controller needs a target > 0, got {target}")
        return AdaptiveKLController(init, target, horizon)
    raise ValueError(f"kl_control: expected 'fixed' or 'adaptive', got {kind!r}")
