"""Self-attention: multi-head, grouped-query and multi-query, causal or bidirectional, with an
optional sliding window per layer.

Two paths compute the same thing: the fast one goes through
`torch.nn.functional.scaled_dot_product_attention` (SDPA, with `is_causal=True` when no other
mask is needed), the explicit one (`attention_weights`, or `Attention(..., return_weights=True)`)
materialises the softmax weights for analysis. Query rows that may attend to nothing (a padded
query under left padding) give an all-zero output and all-zero weights, never NaN.

Masks are built from slots: slot s is the s-th token fed to the model (pads included), the same
for every row of a batch. A key at slot k is visible from a query at slot q when k <= q (causal)
and q - k < window (causal; |q - k| < window when bidirectional), and the key is a real token.
So a window of w lets each token see itself and the w - 1 tokens before it.
Leaves out: the KV cache bookkeeping (model/kv_cache.py). Tests: `pytest tests/test_attention.py`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import apply_rope


class AttnMask(NamedTuple):
    """A prepared attention mask, built once per forward and shared by the layers using it.

    mask: (B|1, 1, T, S) bool, True = may attend, or None for "no mask beyond is_causal".
    is_causal: let SDPA apply the causal mask itself (only when T == S and mask is None).
    row_ok: (B|1, 1, T, 1) bool, False for query rows with no visible key, or None if every row
        has one. Such rows are opened to all keys in `mask` (so softmax is finite) and their
        output is multiplied by zero afterwards.
    """

    mask: torch.Tensor | None
    is_causal: bool = False
    row_ok: torch.Tensor | None = None


NO_MASK = AttnMask(None, False, None)
CAUSAL = AttnMask(None, True, None)


def make_attn_mask(
    q_slots: torch.Tensor,
    k_slots: torch.Tensor,
    *,
    causal: bool,
    window: int | None = None,
    key_real: torch.Tensor | None = None,
) -> AttnMask:
    """Mask for queries at q_slots (T,) over keys at k_slots (S,); negative key slots are empty.

    key_real: (B, S) bool, False for padding keys.
    """
    diff = q_slots[:, None] - k_slots[None, :]  # (T, S)
    allowed = k_slots[None, :] >= 0
    if causal:
        allowed = allowed & (diff >= 0)
    if window is not None:
        allowed = allowed & ((diff if causal else diff.abs()) < window)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if key_real is None:
        # every query sees at least itself (causal) or its window (bidirectional)
        return AttnMask(allowed)
    allowed = allowed & key_real[:, None, None, :]  # (B, 1, T, S)
    row_ok = allowed.any(dim=-1, keepdim=True)  # (B, 1, T, 1)
    return AttnMask(allowed | ~row_ok, False, row_ok)


def prepare_mask(mask: torch.Tensor | None, is_causal: bool = False) -> AttnMask:
    """Wrap a user mask (bool, True = may attend, broadcastable to (B, H, T, S))."""
    if mask is None:
        return AttnMask(None, is_causal, None)
    if is_causal:
        raise ValueError("is_causal: pass either a mask or is_causal=True, not both")
    row_ok = mask.any(dim=-1, keepdim=True)
    return AttnMask(mask | ~row_ok, False, row_ok)


def _repeat_kv(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, n_kv_head, S, hd) -> (B, n_head, S, hd), each KV head shared by a group of queries."""
    groups = n_head // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, amask: AttnMask, dropout_p: float = 0.0
) -> torch.Tensor:
    """Fast path: q (B, H, T, hd), k and v (B, n_kv_head, S, hd) -> (B, H, T, hd)."""
    y = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=amask.mask,
        dropout_p=dropout_p,
        is_causal=amask.is_causal,
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return y if amask.row_ok is None else y * amask.row_ok


def explicit_weights(q: torch.Tensor, k: torch.Tensor, amask: AttnMask) -> torch.Tensor:
    """Explicit path: softmax(q k^T / sqrt(hd)) with masking, (B, H, T, S)."""
    k = _repeat_kv(k, q.shape[1])
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    mask = amask.mask
    if amask.is_causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights if amask.row_ok is None else weights * amask.row_ok


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """SDPA with GQA and NaN-free fully masked rows; mask is bool, True = may attend."""
    return sdpa(q, k, v, prepare_mask(mask, is_causal), dropout_p)


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """The softmax weights (B, H, T, S) that `attend` uses; fully masked rows are all zero."""
    return explicit_weights(q, k, prepare_mask(mask, is_causal))


class Attention(nn.Module):
    """Self-attention with n_head query heads sharing n_kv_head key/value heads."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        self.window = config.windows[layer_idx]  # None = full context
        self.dropout = config.dropout
        qkv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_dim, bias=config.bias)  # [q | k | v]
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def project(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, ...]:
        """x (B, T, C) -> q (B, n_head, T, hd), k and v (B, n_kv_head, T, hd), RoPE applied."""
        B, T, _ = x.shape
        n_q, n_qk = self.n_head, self.n_head + self.n_kv_head
        qkv = self.c_attn(x).view(B, T, n_qk + self.n_kv_head, self.head_dim)
        qk = qkv[:, :, :n_qk] if rope is None else apply_rope(qkv[:, :, :n_qk], *rope)
        q, k, v = qk[:, :, :n_q], qk[:, :, n_q:], qkv[:, :, n_qk:]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        masks: dict[int | None, AttnMask],
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache=None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) -> (y (B, T, C), weights (B, n_head, T, S) or None).

        masks: the prepared mask per window size (see `make_attn_mask`); rope: (cos, sin) each
        (B|1, T, 1, hd); kv_cache: a `KVCache`, which stores k, v and returns every visible key.
        """
        B, T, _ = x.shape
        q, k, v = self.project(x, rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        amask = masks[self.window]
        weights = None
        if return_weights:
            weights = explicit_weights(q, k, amask)
            y = weights @ _repeat_kv(v, self.n_head)
        else:
            y = sdpa(q, k, v, amask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y)), weights
