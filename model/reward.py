"""Scalar-head models on a GPT backbone: the reward model and the PPO value model.

`ScalarHeadModel(config)` runs the GPT's embedding, blocks and final norm (its LM head is not
used) and maps each position's hidden state to one number: `values(idx, mask)` gives one per
token (the value model), `score(idx, mask)` reads the last real token of each row (the reward
model), wherever the padding is. The stored `offset` and `scale` buffers normalise scores
(rewards mean 0, std 1 on policy samples) and travel with the weights.
`bradley_terry_loss` is the pairwise preference loss -log sigmoid(r_chosen - r_rejected)
(Bradley and Terry 1952; Ouyang et al. 2022), with an optional centering term
center_coef * (r_chosen + r_rejected)^2 (Eisenstein et al. 2023): the pairwise loss only sees
differences, so without it each prompt's scores sit at an offset of their own, which PPO's
value model must then learn before the differences between responses show.
Leaves out: data, training loops, files (tasks/reward.py).
Tests: `pytest tests/test_reward.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.gpt import GPT, GPTConfig
from model.ppo import last_true_index


class ScalarHeadModel(nn.Module):
    """GPT backbone + a linear head to one scalar per position."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.backbone = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (config.n_embd + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("offset", torch.zeros(()))  # score = (raw - offset) / scale
        self.register_buffer("scale", torch.ones(()))

    @classmethod
    def from_gpt(cls, gpt: GPT) -> ScalarHeadModel:
        """A new head on a copy of a trained GPT's weights (the policy is left untouched)."""
        model = cls(gpt.config).to(next(gpt.parameters()).device)
        model.backbone.load_state_dict(gpt.state_dict())
        return model

    def hidden(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Final hidden states (B, T, C), through GPT's own embedding, blocks and norm.

        note: uses GPT._prepare (positions and padding masks) rather than a copy of it, so
        padded batches get exactly the positions and masks the LM forward gives them.
        """
        gpt = self.backbone
        x, masks, rope = gpt._prepare(idx, None, attention_mask)
        for block in gpt.blocks:
            x, _ = block(x, masks, rope, None)
        return gpt.ln_f(x) if gpt.ln_f is not None else x

    def values(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Raw per-token scalars (B, T) (the value model's V(s_t) after reading token t)."""
        return self.head(self.hidden(idx, attention_mask)).squeeze(-1).float()

    def raw_score(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Unnormalised score (B,) read at each row's last real token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(idx, dtype=torch.bool)
        last = last_true_index(attention_mask.bool())
        values = self.values(idx, attention_mask)
        return values[torch.arange(idx.shape[0], device=idx.device), last]

    def score(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Normalised score (B,): (raw - offset) / scale."""
        return (self.raw_score(idx, attention_mask) - self.offset) / self.scale

    def set_normalisation(self, raw_scores: torch.Tensor) -> None:
        """Choose offset and scale so these raw scores get mean 0 and std 1."""
        self.offset.fill_(raw_scores.float().mean().item())
        self.scale.fill_(max(raw_scores.float().std().item(), 1e-6))


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, center_coef: float = 0.0
) -> torch.Tensor:
    """Mean -log sigmoid(chosen - rejected) over pairs, plus center_coef times the mean of
    (chosen + rejected)^2 (which pulls each pair's mean score to 0): (N,), (N,) -> scalar."""
    chosen, rejected = chosen.float(), rejected.float()
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center_coef:
        loss = loss + center_coef * (chosen + rejected).pow(2).mean()
    return loss


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen response scores strictly higher."""
    return (chosen > rejected).float().mean().item()
