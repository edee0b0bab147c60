"""GPT: a decoder-only transformer (or a bidirectional encoder with causal=False) and its config.

`GPTConfig` holds every architectural choice (positional encoding, norm kind and placement,
GELU/SwiGLU, grouped-query attention, sliding windows, mixture of experts), validated on
creation. `GPT(config)(idx, targets)` returns (logits, loss); pass a `KVCache` for incremental
decoding and an `attention_mask` for padded batches. Weights start as in GPT-2: normal(0, 0.02),
residual output projections scaled by 1/sqrt(2 * n_layer).
Leaves out: training loops, checkpoint files, generation (model/generation.py).
Tests: `pytest tests/test_model.py`.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import CAUSAL, NO_MASK, Attention, make_attn_mask
from model.layers import make_mlp, make_norm, rope_tables, sinusoidal_table
from model.moe import MoE

CHOICES = {
    "pos_encoding": ("none", "sinusoidal", "learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "norm_placement": ("pre", "post"),
    "mlp": ("gelu", "swiglu"),
}
POSITIVE_INTS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_expert_active")


@dataclass
class GPTConfig:
    """Model shape and options. See `problems()` for every rule that is checked."""

    vocab_size: int = 4096
    block_size: int = 128  # context length
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None -> n_head (multi-head); 1 -> multi-query
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    pos_encoding: str = "rope"  # none | sinusoidal | learned | rope
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_placement: str = "pre"  # pre | post
    mlp: str = "gelu"  # gelu | swiglu (hidden = 2/3 * mlp_ratio * n_embd, rounded up to 8)
    mlp_ratio: float = 4.0
    tie_embeddings: bool = True
    causal: bool = True  # False = bidirectional (masked-LM objective)
    sliding_window: int | list[int | None] | None = None  # per layer if a list; None = full
    n_expert: int = 0  # 0 = dense MLP; > 0 = mixture of experts in every block
    n_expert_active: int = 2  # top-k routing
    expert_capacity_factor: float | None = None  # None = no token dropping (see model/moe.py)
    moe_aux_coef: float = 0.01  # switch-style load-balancing loss coefficient

    def __post_init__(self):
        if isinstance(self.sliding_window, tuple):
            self.sliding_window = list(self.sliding_window)
        problems = self.problems()
        if problems:
            raise ValueError("invalid GPTConfig: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every rule the config breaks, each naming its field."""
        out = [
            f"{key}: expected an int >= 1, got {getattr(self, key)!r}"
            for key in POSITIVE_INTS
            if not _pos_int(getattr(self, key))
        ]
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                out.append(f"{key}: expected one of {list(allowed)}, got {value!r}")
        return out + self._shape_problems() + self._number_problems() + self._window_problems()

    def _shape_problems(self) -> list[str]:
        out = []
        heads_ok = _pos_int(self.n_head) and _pos_int(self.n_embd)
        if heads_ok and self.n_embd % self.n_head:
            out.append(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
        elif heads_ok and self.pos_encoding == "rope" and self.head_dim % 2:
            out.append(f"n_embd: rope needs an even head size n_embd/n_head, got {self.head_dim}")
        kv = self.n_kv_head
        if kv is not None and not (
            _pos_int(kv) and _pos_int(self.n_head) and self.n_head % kv == 0
        ):
            out.append(f"n_kv_head: expected None or a divisor of n_head, got {kv!r}")
        if self.pos_encoding == "sinusoidal" and _pos_int(self.n_embd) and self.n_embd % 2:
            out.append(f"n_embd: sinusoidal positions need an even n_embd, got {self.n_embd}")
        if not (isinstance(self.n_expert, int) and self.n_expert >= 0):
            out.append(f"n_expert: expected an int >= 0, got {self.n_expert!r}")
        elif (
            self.n_expert
            and _pos_int(self.n_expert_active)
            and self.n_expert_active > self.n_expert
        ):
            out.append(f"n_expert_active: {self.n_expert_active} exceeds n_expert={self.n_expert}")
        return out

    def _number_problems(self) -> list[str]:
        out = []
        if not (_num(self.dropout) and 0 <= self.dropout < 1):
            out.append(f"dropout: expected a float in [0, 1), got {self.dropout!r}")
        for key in ("rope_theta", "mlp_ratio"):
            value = getattr(self, key)
            if not (_num(value) and value > 0):
                out.append(f"{key}: expected a number > 0, got {value!r}")
        cf = self.expert_capacity_factor
        if cf is not None and not (_num(cf) and cf > 0):
            out.append(f"expert_capacity_factor: expected None or a number > 0, got {cf!r}")
        if not (_num(self.moe_aux_coef) and self.moe_aux_coef >= 0):
            out.append(f"moe_aux_coef: expected a number >= 0, got {self.moe_aux_coef!r}")
        for key in ("bias", "tie_embeddings", "causal"):
            if not isinstance(getattr(self, key), bool):
                out.append(f"{key}: expected true or false, got {getattr(self, key)!r}")
        return out

    def _window_problems(self) -> list[str]:
        sw = self.sliding_window
        if sw is None or _pos_int(sw):
            return []
        if not isinstance(sw, list) or len(sw) != self.n_layer:
            return [f"sliding_window: expected None, an int >= 1 or a list of n_layer, got {sw!r}"]
        if not all(w is None or _pos_int(w) for w in sw):
            return [f"sliding_window: list entries must be None or ints >= 1, got {sw!r}"]
        return []

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """n_kv_head with None resolved to n_head."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def windows(self) -> list[int | None]:
        """Window per layer; None where the layer sees the whole block (window >= block_size)."""
        sw = self.sliding_window
        per_layer = sw if isinstance(sw, list) else [sw] * self.n_layer
        return [w if w is not None and w < self.block_size else None for w in per_layer]

    def to_dict(self) -> dict:
        """JSON-safe dict (the checkpoint's config file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build from a dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


def _pos_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class Block(nn.Module):
    """One transformer layer: attention then MLP (or MoE), Pre-LN or Post-LN."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.ln_1 = make_norm(config.norm, config.n_embd, config.bias)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = make_norm(config.norm, config.n_embd, config.bias)
        if config.n_expert > 0:
            self.mlp = MoE(config)
        else:
            args = (config.n_embd, config.mlp_ratio, config.bias, config.dropout)
            self.mlp = make_mlp(config.mlp, *args)

    def forward(self, x, masks, rope, kv_cache=None, return_weights=False):
        """x (B, T, C) -> (x (B, T, C), attention weights or None)."""
        if self.pre_norm:
            a, weights = self.attn(self.ln_1(x), masks, rope, kv_cache, return_weights)
            x = x + a
            return x + self.mlp(self.ln_2(x)), weights
        a, weights = self.attn(x, masks, rope, kv_cache, return_weights)
        x = self.ln_1(x + a)
        return self.ln_2(x + self.mlp(x)), weights


class GPT(nn.Module):
    """Token embedding, n_layer blocks, final norm (Pre-LN only) and the language-model head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.block_size, C) if config.pos_encoding == "learned" else None
        if config.pos_encoding == "sinusoidal":
            self.register_buffer(
                "pos_table", sinusoidal_table(config.block_size, C), persistent=False
            )
        if config.pos_encoding == "rope":
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = (
            make_norm(config.norm, C, config.bias) if config.norm_placement == "pre" else None
        )
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()
        self.aux_loss = torch.zeros(())

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02); residual projections N(0, 0.02 / sqrt(2 * n_layer))."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02
                if name.endswith("c_proj.weight"):
                    std /= math.sqrt(2 * self.config.n_layer)
                nn.init.normal_(p, mean=0.0, std=std)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache=None,
        attention_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), mean cross-entropy or None).

        targets: (B, T), -100 = ignored. kv_cache: a `KVCache` that idx continues.
        attention_mask: (B, T), 1 = real token, 0 = padding. last_only: logits for the last
        position only, (B, 1, V) (for generation; needs targets=None).
        """
        x, masks, rope = self._prepare(idx, kv_cache, attention_mask)
        for block in self.blocks:
            x, _ = block(x, masks, rope, kv_cache)
        if self.ln_f is not None:
            x = self.ln_f(x)
        if last_only:
            if targets is not None:
                raise ValueError("last_only: cannot be combined with targets")
            x = x[:, -1:]
        logits = self.lm_head(x)  # (B, T, V)
        self._collect_aux()
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100
        )
        if self.config.n_expert > 0:
            loss = loss + self.config.moe_aux_coef * self.aux_loss
        return logits, loss

    @torch.no_grad()
    def attention_maps(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Softmax attention weights per layer, each (B, n_head, T, T), via the explicit path."""
        x, masks, rope = self._prepare(idx, None, attention_mask)
        maps = []
        for block in self.blocks:
            x, weights = block(x, masks, rope, None, return_weights=True)
            maps.append(weights)
        return maps

    def _prepare(self, idx, kv_cache, attention_mask):
        """Embeddings (B, T, C), the attention masks per window, and RoPE (cos, sin) or None."""
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(
                f"idx: expected a (B, T) long tensor, got {idx.dtype} {tuple(idx.shape)}"
            )
        B, T = idx.shape
        if attention_mask is not None and attention_mask.shape != idx.shape:
            expected, got = tuple(idx.shape), tuple(attention_mask.shape)
            raise ValueError(f"attention_mask: expected shape {expected} (as idx), got {got}")
        if kv_cache is not None:
            if kv_cache.batch_size != B:
                raise ValueError(f"kv_cache: built for batch {kv_cache.batch_size}, got {B}")
            positions, masks = kv_cache.begin(T, attention_mask)
        else:
            if not 1 <= T <= self.config.block_size:
                raise ValueError(f"idx: length {T} not in [1, block_size={self.config.block_size}]")
            positions, masks = self._full_masks(T, idx.device, attention_mask)
        x = self.drop(self._embed(idx, positions))
        return x, masks, self._rope(positions, T)

    def _full_masks(self, T, device, attention_mask) -> tuple:
        """Positions and masks for an uncached forward of T tokens."""
        causal = self.config.causal
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: keep the fast path
        if attention_mask is None:
            positions, key_real = 0, None
        else:
            key_real = attention_mask.bool()
            positions = (key_real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        masks = {}
        slots = torch.arange(T, device=device)
        for w in set(self.config.windows):
            if key_real is None and (w is None or w >= T):
                masks[w] = CAUSAL if causal else NO_MASK
            else:
                masks[w] = make_attn_mask(slots, slots, causal=causal, window=w, key_real=key_real)
        return positions, masks

    def _embed(self, idx, positions) -> torch.Tensor:
        """Token embeddings plus additive positions (learned or sinusoidal), (B, T, C)."""
        x = self.wte(idx)
        table = self.wpe.weight if self.wpe is not None else getattr(self, "pos_table", None)
        if table is None:
            return x
        if isinstance(positions, int):
            return x + table[positions : positions + idx.shape[1]]
        return x + table[positions]

    def _rope(self, positions, T):
        """(cos, sin), each (B|1, T, 1, hd), or None without RoPE."""
        if self.config.pos_encoding != "rope":
            return None
        if isinstance(positions, int):
            sl = slice(positions, positions + T)
            return self.rope_cos[sl, None], self.rope_sin[sl, None]
        return self.rope_cos[positions][:, :, None], self.rope_sin[positions][:, :, None]

    # ------------------------------------------------------------------ mixture of experts

    def _moe_layers(self) -> list[MoE]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]

    def _collect_aux(self) -> None:
        """aux_loss: the mean over layers of each router's load-balancing loss (0 if dense)."""
        layers = self._moe_layers()
        if layers:
            self.aux_loss = torch.stack([m.aux_loss for m in layers]).mean()

    def expert_utilisation(self) -> list[list[float]]:
        """Per MoE layer, the fraction of routing choices each expert got in the last forward."""
        return [m.utilisation.tolist() for m in self._moe_layers()]

    # ------------------------------------------------------------------ accounting

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; shared (tied) tensors count once.

        non_embedding (Kaplan et al. 2020): leave out the token embedding, learned positions and
        an untied output head, so the count does not depend on tying.
        """
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            for p in (self.wte.weight, self.lm_head.weight):
                params.pop(id(p), None)
            if self.wpe is not None:
                params.pop(id(self.wpe.weight), None)
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, T: int | None = None, *, include_head: bool = False) -> float:
        """Training FLOPs per token: 6 * N + 12 * n_layer * n_embd * T (PaLM appendix B).

        N is the non-embedding parameter count, counting only the n_expert_active experts a
        token goes through in MoE blocks; 12 * n_layer * n_embd * T is the attention-score work
        at context T (default block_size). note: the output head's matmul (6 * n_embd *
        vocab_size) is left out by this convention, which undercounts small-vocab-heavy models
        such as the default (head 0.5 M vs blocks 0.8 M params); include_head=True adds it.
        """
        cfg = self.config
        T = cfg.block_size if T is None else T
        n = self.num_params(non_embedding=True)
        if cfg.n_expert > 0:
            expert = sum(p.numel() for p in self._moe_layers()[0].experts[0].parameters())
            n -= cfg.n_layer * (cfg.n_expert - cfg.n_expert_active) * expert
        if include_head:
            n += cfg.n_embd * cfg.vocab_size
        return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * T
