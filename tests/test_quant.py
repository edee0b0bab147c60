"""Tests for model/quant.py (quantize / dequantize, packing, modules) and the quantize stage."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from model.gpt import GPT, GPTConfig
from model.quant import (
    QuantLinear,
    QuantScheme,
    dequantize,
    pack_int4,
    quantize_model,
    quantize_weight,
    unpack_int4,
    weight_bytes,
)
from tests.conftest import copy_repo, run_in

SCHEMES = [
    QuantScheme(8, "tensor"),
    QuantScheme(8, "channel"),
    QuantScheme(8, "group", 16),
    QuantScheme(4, "tensor"),
    QuantScheme(4, "channel"),
    QuantScheme(4, "group", 32),
    QuantScheme(8, "channel", symmetric=False),
    QuantScheme(4, "group", 32, symmetric=False),
    QuantScheme(4, "tensor", symmetric=False),
]


def per_element_scale(qt) -> torch.Tensor:
    """The fp32 scale each element of the (N, K) weight was quantized with."""
    N, K = qt.shape
    s = qt.scale.float()
    if qt.scheme.granularity == "group":
        s = s.repeat_interleave(qt.scheme.group_size, dim=1)
    return s.expand(N, -1)[:, :K] if s.shape[1] > 1 else s.expand(N, K)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_error_bound_per_scheme(scheme):
    torch.manual_seed(0)
    w = torch.randn(48, 100) * 0.05  # K=100: not a multiple of the group size (padding)
    qt = quantize_weight(w, scheme)
    err = (w - dequantize(qt)).abs()
    bound = per_element_scale(qt) * (0.5 if scheme.symmetric else 1.0)
    assert bool((err <= bound * (1 + 1e-5) + 1e-12).all())
    if scheme.symmetric:  # the stored integers stay in the documented range
        q = torch.round(dequantize(qt) / per_element_scale(qt).clamp(min=1e-30))
        assert q.abs().max() <= 2 ** (scheme.bits - 1) - 1


def test_finer_scales_are_more_accurate():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * torch.logspace(-2, 0, 64)[:, None]  # rows of different range
    err = {
        g: (w - dequantize(quantize_weight(w, QuantScheme(4, g, 32)))).pow(2).mean()
        for g in ("tensor", "channel", "group")
    }
    assert err["group"] < err["channel"] < err["tensor"]


def test_int4_storage_is_half_of_int8():
    w = torch.randn(64, 128)
    q8 = quantize_weight(w, QuantScheme(8, "channel"))
    q4 = quantize_weight(w, QuantScheme(4, "channel"))
    assert q8.data.dtype == torch.int8 and q8.data.numel() == 64 * 128
    assert q4.data.dtype == torch.uint8 and q4.data.numel() == 64 * 64


def test_pack_roundtrip():
    u = torch.randint(0, 16, (7, 10), dtype=torch.uint8)
    packed = pack_int4(u)
    assert packed.shape == (7, 5)
    assert torch.equal(unpack_int4(packed), u)
    assert packed[0, 0] == u[0, 0] | (u[0, 1] << 4)  # documented nibble order
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(3, dtype=torch.uint8))


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_zero_tensor_rows_and_groups_are_exact(scheme):
    w = torch.randn(8, 64)
    w[2] = 0.0  # a zero row
    w[5, :32] = 0.0  # a zero group
    for weight in (w, torch.zeros(8, 64)):
        dq = dequantize(quantize_weight(weight, scheme))
        assert bool(torch.isfinite(dq).all())
        assert bool((dq[weight == 0] == 0).all())


def test_outlier_only_hurts_its_own_block():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 0.02
    w[3, 5] = 10.0
    # another row (per channel) or the other group of the same row (group-wise): unaffected
    spared_blocks = [
        (QuantScheme(8, "channel"), (4, slice(None))),
        (QuantScheme(4, "group", 32), (3, slice(32, None))),
    ]
    for scheme, spared in spared_blocks:
        dq = dequantize(quantize_weight(w, scheme))
        assert abs(dq[3, 5] - 10.0) < 1e-2  # the outlier itself is kept
        other = (w[spared] - dq[spared]).abs().max()
        assert other < 0.02 * 4 / (2 ** (scheme.bits - 1) - 1)
    dq_tensor = dequantize(quantize_weight(w, QuantScheme(4, "tensor")))
    assert bool((dq_tensor[4] == 0).all())  # one scale per tensor flattens the rest to zero


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="bits"):
        QuantScheme(bits=3)
    with pytest.raises(ValueError, match="NaN"):
        quantize_weight(torch.tensor([[1.0, float("nan")]]), QuantScheme())
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.ones(4), QuantScheme())


def test_int8_compute_matches_dequantized_matmul():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40, bias=True)
    x = torch.randn(3, 5, 96)
    for granularity in ("channel", "tensor"):
        qt = quantize_weight(lin.weight, QuantScheme(8, granularity))
        fast = QuantLinear(qt, lin.bias, int8_compute=True)
        slow = QuantLinear(qt, lin.bias, int8_compute=False)
        assert fast.int8_ready and not slow.int8_ready
        ref = F.linear(x, dequantize(qt), lin.bias)
        assert torch.allclose(slow(x), ref, atol=1e-6)
        # int8 activations add at most ~ |x|max/254 * sum|w| of error per output
        assert (fast(x) - ref).abs().max() < 0.02 * ref.abs().max()


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=64)
    return GPT(GPTConfig(**(cfg | kw))).eval()


@pytest.mark.parametrize(
    "scheme,embeddings,tol",
    [
        (QuantScheme(8, "channel"), False, 0.01),
        (QuantScheme(8, "channel"), True, 0.01),
        (QuantScheme(4, "group", 32), True, 0.1),
        (QuantScheme(8, "channel", symmetric=False), False, 0.01),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_quantized_model_logits_close(scheme, embeddings, tol):
    model = tiny_gpt()
    idx = torch.randint(0, 128, (2, 24))
    ref = model(idx)[0]
    q = quantize_model(model, scheme, embeddings=embeddings)
    out = q(idx)[0]
    assert (out - ref).abs().max() < tol * ref.abs().max()
    assert model(idx)[0].equal(ref)  # the original is untouched (a copy was quantized)
    sizes = weight_bytes(q)
    ratio = sizes["quantized_fp32"] / sizes["quantized"]
    assert ratio > (3.8 if scheme.bits == 8 else 6.0)


def test_save_load_roundtrip_and_corrupt_file(tmp_path):
    from tasks.quantize import load_quantized, save_quantized

    tok_file = tmp_path / "tokenizer.json"
    tok_file.write_text("{}", encoding="utf-8")
    model = tiny_gpt()
    idx = torch.randint(0, 128, (1, 16))
    for scheme in (QuantScheme(8, "channel"), QuantScheme(4, "group", 32, symmetric=False)):
        q = quantize_model(model, scheme, embeddings=True)
        folder = tmp_path / scheme.name
        save_quantized(folder, q, {"scheme": scheme.to_dict(), "embeddings": True}, tok_file)
        loaded = load_quantized(folder)
        assert torch.equal(loaded(idx)[0], q(idx)[0])
        assert loaded.lm_head.qweight is loaded.wte.qweight  # tying survives the round trip
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_quantized(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["quantization"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a quantized checkpoint"):
        load_quantized(folder)


def test_quantize_stage_quick(quick_pretrained, tmp_path):
    repo = copy_repo(quick_pretrained, tmp_path / "r")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["quantize"]["models"] = ["pretrain", "nosuchstage"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_in(repo, "-m", "tasks.quantize")
    assert "no 'nosuchstage' stage" in proc.stdout
    metrics = json.loads((repo / "metrics/quantize.json").read_text())["pretrain"]
    assert set(metrics) == {"fp32", "int8-channel", "int8-tensor", "int4-g32", "int4-tensor"}
    assert abs(metrics["int8-channel"]["ppl_increase"]) < 0.05
    assert metrics["int8-channel"]["layer_size_ratio"] > 3.5
    assert metrics["int4-g32"]["layer_size_ratio"] > 6.0
    assert metrics["int4-g32"]["file_bytes"] < metrics["fp32"]["file_bytes"]
    assert (repo / "out/quantize/pretrain-int4-g32/model.safetensors").exists()
    assert "| pretrain | int8-channel |" in (repo / "out/quantize/report.md").read_text()
