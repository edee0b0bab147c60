"""Weight quantization of a GPT's linear layers: int8 / int4, symmetric or zero-point, per tensor,
per output channel or per group of input features, with a real int8 compute path on CPU.

A weight W (N, K) (out_features, in_features) is split into blocks that share one scale:
the whole tensor (`tensor`), one row per output channel (`channel`), or `group_size` consecutive
inputs of one row (`group`; K is zero-padded up to a multiple of the group size). Then

- symmetric (absmax): q = round(w / s), s = max|w| / qmax, w ~ q * s;
- asymmetric (zero point): q = round(w / s) + z, s = (max - min) / (2^bits - 1), w ~ (q - z) * s,
  with [min, max] widened to hold 0, so 0 is always exact.

Integer ranges. int8: symmetric [-127, 127] (-128 unused, so the grid is symmetric), zero-point
[0, 255]. int4: symmetric [-7, 7] (-8 unused), stored as the unsigned nibble q + 8 in [1, 15];
zero-point [0, 15]. Two 4-bit values share one byte (element 2j in the low nibble, 2j + 1 in the
high one), so an int4 weight really takes half the bytes of an int8 one. Scales are stored as
fp16, rounded *up* to the next fp16 value so no weight clips; zero points as uint8.
Error bound per element: |w - dq(q(w))| <= s / 2 (symmetric), <= s (zero-point: the rounded
zero point can shift the grid by up to s / 2). A block of zeros gets s = 0 and dequantizes to
exact zeros (never NaN). One outlier only costs precision to the block it sits in, which is why
per-channel and group-wise scales beat one scale per tensor.

Compute. `QuantLinear` keeps only the integer weights and dequantizes them on each forward
(any device). On CPU, symmetric int8 per-channel / per-tensor layers instead run a real int8
matmul: activations are quantized per token (absmax, int8), `torch._int_mm` multiplies int8 by
int8 into int32, and the result is rescaled by (activation scale x weight scale). Measured on
this CPU with torch 2.13 (bench/bench_quant.py): `torch._weight_int8pack_mm` (int8 weights,
fp32 activations) was 10-25x *slower* than the fp32 matmul at these sizes, and the
`torch.ao` dynamic-quantized Linear is deprecated and was slower too, so `_int_mm` is the
int8 path. `int8_compute=False` keeps weight-only numerics (dequantize, fp32 matmul).
Leaves out: activation-aware methods (GPTQ, AWQ, SmoothQuant), int4 compute kernels (the int4
layers dequantize), quantized attention / KV cache, files (tasks/quantize.py saves and loads).
Tests: `pytest tests/test_quant.py`. Benchmark: `python bench/bench_quant.py`.
"""

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

GRANULARITIES = ("tensor", "channel", "group")
FP16_MAX = 65504.0


@dataclass(frozen=True)
class QuantScheme:
    """How to quantize: bit width, scale granularity, group size, symmetric or zero-point."""

    bits: int = 8  # 8 | 4
    granularity: str = "channel"  # tensor | channel | group
    group_size: int = 64  # inputs per scale, for granularity "group"
    symmetric: bool = True  # False = asymmetric with a zero point

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("invalid QuantScheme: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.bits not in (4, 8):
            out.append(f"bits: expected 4 or 8, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            out.append(
                f"granularity: expected one of {list(GRANULARITIES)}, got {self.granularity!r}"
            )
        gs = self.group_size
        if not (isinstance(gs, int) and gs >= 2 and gs % 2 == 0):
            out.append(f"group_size: expected an even int >= 2, got {gs!r}")
        if not isinstance(self.symmetric, bool):
            out.append(f"symmetric: expected true or false, got {self.symmetric!r}")
        return out

    @property
    def name(self) -> str:
        """Short name: int8-channel, int4-g32, int4-tensor-asym, ..."""
        part = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        return f"int{self.bits}-{part}" + ("" if self.symmetric else "-asym")

    @property
    def qrange(self) -> tuple[int, int]:
        """(qmin, qmax) of the stored integers (before the +8 nibble offset of symmetric int4)."""
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            return -qmax, qmax
        return 0, 2**self.bits - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantScheme":
        return cls(**d)


# ---------------------------------------------------------------------- int4 packing


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """uint8 values in [0, 15], (..., 2n) -> (..., n) bytes: element 2j low nibble, 2j+1 high."""
    if u.shape[-1] % 2:
        raise ValueError(f"pack_int4: last dimension must be even, got {tuple(u.shape)}")
    u = u.to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: (..., n) bytes -> (..., 2n) uint8 values in [0, 15]."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


# ---------------------------------------------------------------------- quantize / dequantize


@dataclass
class QTensor:
    """A quantized 2-D weight (N, K) and what is needed to dequantize it."""

    data: torch.Tensor  # int8 (N, Kp) | uint8 (N, Kp) zero-point int8 | uint8 (N, Kp/2) int4
    scale: torch.Tensor  # fp16 (1, 1) per tensor, (N, 1) per channel, (N, Kp/group) per group
    zero: torch.Tensor | None  # uint8, shaped as scale; None when symmetric
    shape: tuple[int, int]  # (N, K) of the original weight
    scheme: QuantScheme


def padded_width(K: int, scheme: QuantScheme) -> int:
    """Kp: K rounded up to a whole number of groups (and to even for int4 packing)."""
    if scheme.granularity == "group":
        return math.ceil(K / scheme.group_size) * scheme.group_size
    return K + (K % 2 if scheme.bits == 4 else 0)


def _blocks(w: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """View a padded (N, Kp) matrix as (Ns, G, block): each [i, j, :] shares one scale."""
    N, Kp = w.shape
    if scheme.granularity == "tensor":
        return w.reshape(1, 1, N * Kp)
    if scheme.granularity == "channel":
        return w.reshape(N, 1, Kp)
    return w.reshape(N, Kp // scheme.group_size, scheme.group_size)


def _fp16_round_up(s: torch.Tensor) -> torch.Tensor:
    """Scales as fp16, never below the exact value (so |w / s| never exceeds qmax)."""
    if s.numel() and float(s.max()) > FP16_MAX:
        raise ValueError(f"weights too large to quantize with fp16 scales (scale {float(s.max())})")
    h = s.half()
    low = h.float() < s
    return torch.where(low, torch.nextafter(h, torch.full_like(h, float("inf"))), h)


def _scale_zero(blocks: torch.Tensor, scheme: QuantScheme):
    """Per-block fp16 scale (Ns, G) and uint8 zero point (or None)."""
    qmin, qmax = scheme.qrange
    if scheme.symmetric:
        return _fp16_round_up(blocks.abs().amax(-1) / qmax), None
    lo = blocks.amin(-1).clamp(max=0.0)
    hi = blocks.amax(-1).clamp(min=0.0)
    scale = _fp16_round_up((hi - lo) / qmax)
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(lo))
    zero = torch.round(-lo / safe).clamp(0, qmax).to(torch.uint8)  # 0 for an all-zero block
    return scale, zero


def quantize_weight(w: torch.Tensor, scheme: QuantScheme) -> QTensor:
    """Quantize a 2-D weight (N, K); see the module docstring for the ranges and bounds."""
    if w.dim() != 2:
        raise ValueError(f"quantize_weight: expected a 2-D weight, got shape {tuple(w.shape)}")
    w = w.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("quantize_weight: the weight has NaN or infinite values")
    N, K = w.shape
    blocks = _blocks(F.pad(w, (0, padded_width(K, scheme) - K)), scheme)
    scale, zero = _scale_zero(blocks, scheme)
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    q = torch.round(blocks / safe[..., None])
    if zero is not None:
        q = q + zero[..., None].float()
    qmin, qmax = scheme.qrange
    q = q.clamp(qmin, qmax).reshape(N, -1)
    return QTensor(_store(q, scheme), scale, zero, (N, K), scheme)


def _store(q: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Integers (N, Kp) as float -> the storage tensor (int8, uint8 or packed int4)."""
    if scheme.bits == 8:
        return q.to(torch.int8 if scheme.symmetric else torch.uint8)
    if scheme.symmetric:
        q = q + 8  # [-7, 7] -> [1, 15]
    return pack_int4(q.to(torch.uint8))


def integer_values(data: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """The stored integers (N, Kp) as float32, in the scheme's qrange."""
    if scheme.bits == 8:
        return data.float()
    u = unpack_int4(data).float()
    return u - 8 if scheme.symmetric else u


def dequantize_parts(data, scale, zero, scheme: QuantScheme, K: int) -> torch.Tensor:
    """fp32 weight (N, K) from storage; N comes from `data` (so row subsets work too)."""
    q = integer_values(data, scheme)
    blocks = _blocks(q, scheme)
    if zero is not None:
        blocks = blocks - zero[..., None].float()
    w = blocks * scale[..., None].float()
    return w.reshape(q.shape)[:, :K]


def dequantize(qt: QTensor) -> torch.Tensor:
    return dequantize_parts(qt.data, qt.scale, qt.zero, qt.scheme, qt.shape[1])


# ---------------------------------------------------------------------- modules


class _QuantWeight(nn.Module):
    """Holds a quantized weight as buffers (qweight, scale, zero) and dequantizes it."""

    def _set_weight(self, qt: QTensor) -> None:
        self.scheme = qt.scheme
        self.out_features, self.in_features = qt.shape
        self.register_buffer("qweight", qt.data)
        self.register_buffer("scale", qt.scale)
        self.register_buffer("zero", qt.zero)  # None is skipped by state_dict

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized fp32 weight (N, K) (for inspection; the forward may not use it)."""
        return dequantize_parts(self.qweight, self.scale, self.zero, self.scheme, self.in_features)

    def quantized_nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.qweight, self.scale, self.zero)
            if t is not None
        )


class QuantLinear(_QuantWeight):
    """A Linear layer that runs from quantized weights (int8 matmul on CPU where it can)."""

    def __init__(self, qt: QTensor, bias: torch.Tensor | None = None, int8_compute: bool = True):
        super().__init__()
        self._set_weight(qt)
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )
        s = qt.scheme
        self.int8_ready = (
            int8_compute and s.bits == 8 and s.symmetric and s.granularity in ("tensor", "channel")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8_ready and x.device.type == "cpu":
            return self._int8_forward(x)
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token absmax int8 activations x int8 weights -> int32, rescaled: (..., N)."""
        x2 = x.reshape(-1, self.in_features).float()  # (M, K)
        xs = x2.abs().amax(dim=1, keepdim=True) / 127.0  # (M, 1)
        xs = torch.where(xs > 0, xs, torch.ones_like(xs))
        xq = torch.round(x2 / xs).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(xq, self.qweight.t())  # (M, N) int32
        y = acc.float() * xs * self.scale.float().view(1, -1)  # (1, 1) or (N, 1) -> broadcast
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        path = "int8 matmul" if self.int8_ready else "dequantize"
        return f"{self.in_features}, {self.out_features}, {self.scheme.name}, {path} on CPU"


class QuantEmbedding(_QuantWeight):
    """An Embedding whose table (V, C) is quantized; a lookup dequantizes only the rows used."""

    def __init__(self, qt: QTensor):
        super().__init__()
        self._set_weight(qt)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)
        per_row = self.scheme.granularity != "tensor"
        scale = self.scale[flat] if per_row else self.scale
        zero = None if self.zero is None else (self.zero[flat] if per_row else self.zero)
        rows = dequantize_parts(self.qweight[flat], scale, zero, self.scheme, self.in_features)
        return rows.reshape(*idx.shape, self.in_features)


def share_weight(dst: _QuantWeight, src: _QuantWeight) -> None:
    """Make dst use src's quantized buffers (tied embeddings and output head)."""
    for name in ("qweight", "scale", "zero"):
        setattr(dst, name, getattr(src, name))


# ---------------------------------------------------------------------- whole model


def quantize_model(
    model: nn.Module,
    scheme: QuantScheme,
    *,
    embeddings: bool = False,
    int8_compute: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Replace every Linear in the transformer blocks by a QuantLinear (MoE routers excepted).

    embeddings=True also quantizes the token embedding and the output head (once, when they
    are tied). Returns the quantized model (a copy unless inplace); it is for inference only.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for block in model.blocks:
        for name, child in list(block.named_modules()):
            if isinstance(child, nn.Linear) and not name.endswith("router"):
                parent_name, _, attr = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                qt = quantize_weight(child.weight, scheme)
                setattr(parent, attr, QuantLinear(qt, child.bias, int8_compute))
    if embeddings:
        _quantize_embeddings(model, scheme, int8_compute)
    return model.eval()


def _quantize_embeddings(model: nn.Module, scheme: QuantScheme, int8_compute: bool) -> None:
    tied = model.lm_head.weight is model.wte.weight
    wte = QuantEmbedding(quantize_weight(model.wte.weight, scheme))
    head = QuantLinear(quantize_weight(model.lm_head.weight, scheme), None, int8_compute)
    if tied:
        share_weight(head, wte)
    model.wte, model.lm_head = wte, head


def quantized_layers(model: nn.Module) -> dict[str, _QuantWeight]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _QuantWeight)}


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the weights in memory, shared tensors once.

    quantized: the quantized layers' integers, scales and zero points; quantized_fp32: the
    same layers as fp32 weights; total: every parameter and persistent buffer.
    """
    layers = quantized_layers(model)
    seen, quant, quant_fp32 = set(), 0, 0
    for m in layers.values():
        if m.qweight.data_ptr() in seen:
            continue
        seen.add(m.qweight.data_ptr())
        quant += m.quantized_nbytes()
        quant_fp32 += 4 * m.out_features * m.in_features
    total, seen_all = 0, set()
    for t in list(model.parameters()) + [b for b in model.state_dict().values()]:
        if t.data_ptr() not in seen_all:
            seen_all.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return {"quantized": quant, "quantized_fp32": quant_fp32, "total": total}
