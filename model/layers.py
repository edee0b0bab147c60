"""Transformer building blocks: norms, feed-forward layers and positional encodings.

What is here: `RMSNorm` (ours, checked against `torch.nn.RMSNorm`), `make_norm` (LayerNorm or
RMSNorm), the GELU `MLP` and the `SwiGLU` feed-forward (Shazeer 2020), `make_mlp`, fixed
sinusoidal position tables (Vaswani et al. 2017) and rotary embeddings (RoPE, Su et al. 2021).
What is not: attention (model/attention.py) and the mixture of experts (model/moe.py).

SwiGLU width: the hidden size is 2/3 * mlp_ratio * n_embd rounded up to a multiple of 8, so a
SwiGLU layer (three matrices) has about the parameters of a GELU MLP (two matrices) of the same
mlp_ratio, as in LLaMA. Tests: `pytest tests/test_model.py`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / rms(x) * weight, no mean, no bias."""

    def __init__(self, n_embd: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 so that low-precision activations do not lose the scale
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def make_norm(norm: str, n_embd: int, bias: bool) -> nn.Module:
    """LayerNorm (torch's, bias optional) or our RMSNorm, by config name."""
    if norm == "layernorm":
        return nn.LayerNorm(n_embd, bias=bias)
    if norm == "rmsnorm":
        return RMSNorm(n_embd)
    raise ValueError(f"norm: expected 'layernorm' or 'rmsnorm', got {norm!r}")


def swiglu_hidden(n_embd: int, mlp_ratio: float) -> int:
    """SwiGLU hidden width: 2/3 * mlp_ratio * n_embd, rounded up to a multiple of 8."""
    hidden = int(2 * mlp_ratio * n_embd / 3)
    return 8 * math.ceil(hidden / 8)


class MLP(nn.Module):
    """Two-layer GELU feed-forward: n_embd -> mlp_ratio * n_embd -> n_embd."""

    def __init__(self, n_embd: int, mlp_ratio: float, bias: bool, dropout: float):
        super().__init__()
        hidden = int(mlp_ratio * n_embd)
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Gated feed-forward: c_proj(silu(x W_gate) * (x W_up)), gate and up in one matmul."""

    def __init__(self, n_embd: int, mlp_ratio: float, bias: bool, dropout: float):
        super().__init__()
        self.hidden = swiglu_hidden(n_embd, mlp_ratio)
        self.c_fc = nn.Linear(n_embd, 2 * self.hidden, bias=bias)  # [gate | up]
        self.c_proj = nn.Linear(self.hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).split(self.hidden, dim=-1)
        return self.dropout(self.c_proj(F.silu(gate) * up))


def make_mlp(mlp: str, n_embd: int, mlp_ratio: float, bias: bool, dropout: float) -> nn.Module:
    """GELU MLP or SwiGLU, by config name."""
    if mlp == "gelu":
        return MLP(n_embd, mlp_ratio, bias, dropout)
    if mlp == "swiglu":
        return SwiGLU(n_embd, mlp_ratio, bias, dropout)
    raise ValueError(f"mlp: expected 'gelu' or 'swiglu', got {mlp!r}")


def sinusoidal_table(block_size: int, n_embd: int) -> torch.Tensor:
    """Fixed sin/cos positions (block_size, n_embd): even dims sin, odd dims cos."""
    pos = torch.arange(block_size, dtype=torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, n_embd, 2, dtype=torch.float64) / n_embd)
    table = torch.zeros(block_size, n_embd, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table.float()


def rope_tables(block_size: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE cos and sin tables (block_size, head_dim) in the rotate-half layout.

    Dimension i of the first half pairs with dimension i of the second half and rotates by
    position * theta^(-2i / head_dim).
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(block_size, dtype=torch.float64)[:, None] * inv_freq  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, hd) by per-position angles; cos, sin broadcast as (B|1, T, 1, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
