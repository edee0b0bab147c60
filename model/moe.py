"""Mixture of experts: a top-k router over expert MLPs (the config's MLP kind).

Routing: softmax router probabilities in fp32; each token goes to its n_expert_active most
probable experts, whose outputs are mixed with the top-k probabilities renormalised to sum to 1
(as in Mixtral; with top-1 the weight is exactly 1).
Load balancing (Switch Transformer, Fedus et al. 2021): aux = n_expert * sum_i f_i * P_i, with
f_i the fraction of routing choices that went to expert i and P_i the mean router probability
of expert i; it is 1 when balanced and reaches n_expert when one expert takes everything.
Capacity: with expert_capacity_factor=None no token is ever dropped. With a factor c, during
training only, each expert takes at most ceil(c * N * k / n_expert) of the N * k routing choices
of a batch, first choices before second choices and earlier tokens first; a dropped choice adds
nothing (the token keeps its residual). Evaluation never drops, so cached and uncached decoding
agree. Leaves out: expert parallelism, router z-loss, noisy gating.
Tests: `pytest tests/test_model.py -k moe`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import make_mlp


class MoE(nn.Module):
    """Top-k mixture of expert MLPs with the switch-style load-balancing loss."""

    def __init__(self, config):
        super().__init__()
        self.n_expert = config.n_expert
        self.top_k = config.n_expert_active
        self.capacity_factor = config.expert_capacity_factor
        self.router = nn.Linear(config.n_embd, config.n_expert, bias=False)
        args = (config.n_embd, config.mlp_ratio, config.bias, config.dropout)
        self.experts = nn.ModuleList(make_mlp(config.mlp, *args) for _ in range(config.n_expert))
        # statistics of the last forward
        self.aux_loss = torch.zeros(())
        self.utilisation = torch.zeros(config.n_expert)
        self.drop_fraction = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        xs = x.reshape(-1, x.shape[-1])  # (N, C)
        probs = F.softmax(self.router(xs).float(), dim=-1)  # (N, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = (top_p / top_p.sum(dim=-1, keepdim=True)).to(x.dtype)

        # switch load-balancing loss; gradients reach the router through P only
        f = torch.bincount(top_i.flatten(), minlength=self.n_expert).float() / top_i.numel()
        self.aux_loss = self.n_expert * (f * probs.mean(dim=0)).sum()
        self.utilisation = f.detach()

        keep = None
        if self.training and self.capacity_factor is not None:
            keep = self._within_capacity(top_i)
            self.drop_fraction = 1.0 - keep.float().mean()
        return self._dispatch(xs, top_i, weights, keep).view_as(x)

    def _within_capacity(self, top_i: torch.Tensor) -> torch.Tensor:
        """(N, k) bool: the routing choices that fit in their expert's capacity."""
        n, k = top_i.shape
        capacity = math.ceil(self.capacity_factor * n * k / self.n_expert)
        # choice-major order: every token's first choice, then every second choice (GShard)
        flat = top_i.t().reshape(-1)  # (k * N,)
        onehot = F.one_hot(flat, self.n_expert)  # (k * N, E)
        rank = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # place in its expert's queue
        return (rank < capacity).view(k, n).t()

    def _dispatch(self, xs, top_i, weights, keep) -> torch.Tensor:
        """Run each expert on its tokens and add the weighted outputs, (N, C)."""
        out = torch.zeros_like(xs)
        for e, expert in enumerate(self.experts):
            chosen = top_i == e if keep is None else (top_i == e) & keep
            tok, slot = chosen.nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            y = expert(xs[tok]) * weights[tok, slot, None]
            out.index_add_(0, tok, y)
        return out
