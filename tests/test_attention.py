"""Attention against references: torch SDPA, a naive einsum implementation, and RoPE as complex
rotation. Also GQA/MQA layout, sliding windows and fully masked rows."""

import pytest
import torch
import torch.nn.functional as F

from model.attention import Attention, attend, attention_weights, make_attn_mask
from model.gpt import GPT, GPTConfig
from model.layers import apply_rope, rope_tables


def naive_attention(q, k, v, mask=None):
    """einsum reference; q (B, H, T, hd), k and v (B, H_kv, S, hd), mask True = may attend."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1).nan_to_num(0.0)  # fully masked rows -> 0
    return torch.einsum("bhts,bhsd->bhtd", weights, v), weights


def tiny(**kw):
    base = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **kw})


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
def test_attend_matches_sdpa_and_einsum(n_kv, causal):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 8)
    k, v = torch.randn(2, n_kv, 7, 8), torch.randn(2, n_kv, 7, 8)
    mask = torch.ones(7, 7, dtype=torch.bool).tril() if causal else None
    ref, ref_w = naive_attention(q, k, v, mask)
    got = attend(q, k, v, is_causal=causal)
    groups = 4 // n_kv
    sdpa = F.scaled_dot_product_attention(
        q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), is_causal=causal
    )
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention_weights(q, k, is_causal=causal), ref_w)


def test_module_matches_naive_projection():
    """Attention(x) == c_proj(naive attention of the q, k, v rows of c_attn), GQA layout."""
    torch.manual_seed(0)
    cfg = tiny(n_kv_head=2, pos_encoding="none")
    attn = Attention(cfg, 0)
    x = torch.randn(2, 6, 32)
    masks = {None: make_attn_mask(torch.arange(6), torch.arange(6), causal=True)}
    got, _ = attn(x, masks)

    W = attn.c_attn.weight  # rows: 4 query heads, 2 key heads, 2 value heads, 8 dims each
    q = (x @ W[:32].T).view(2, 6, 4, 8).transpose(1, 2)
    k = (x @ W[32:48].T).view(2, 6, 2, 8).transpose(1, 2)
    v = (x @ W[48:].T).view(2, 6, 2, 8).transpose(1, 2)
    y, _ = naive_attention(q, k, v, torch.ones(6, 6, dtype=torch.bool).tril())
    ref = attn.c_proj(y.transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_explicit_path_matches_fast_path():
    torch.manual_seed(0)
    cfg = tiny(n_kv_head=2, sliding_window=3)
    attn = Attention(cfg, 0)
    x = torch.randn(2, 9, 32)
    key_real = torch.ones(2, 9, dtype=torch.bool)
    key_real[0, :4] = False  # left padding on row 0
    masks = {
        3: make_attn_mask(
            torch.arange(9), torch.arange(9), causal=True, window=3, key_real=key_real
        )
    }
    fast, _ = attn(x, masks)
    slow, weights = attn(x, masks, return_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert torch.all(weights[0, :, :4] == 0)  # padded queries see nothing
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(4, 9))


def test_gqa_equals_multihead_with_repeated_kv_weights():
    """n_kv_head=2 behaves as multi-head attention whose K/V heads are shared by query pairs."""
    torch.manual_seed(0)
    gqa = GPT(tiny(n_kv_head=2)).eval()
    mha = GPT(tiny(n_kv_head=4)).eval()
    sd = gqa.state_dict()
    for i in range(2):
        W = sd[f"blocks.{i}.attn.c_attn.weight"]
        q, k, v = W[:32], W[32:48].view(2, 8, 32), W[48:].view(2, 8, 32)
        rep = lambda t: t.repeat_interleave(2, 0).reshape(32, 32)  # noqa: E731
        sd[f"blocks.{i}.attn.c_attn.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    idx = torch.randint(0, 64, (2, 10))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)


def test_kv_heads_equal_heads_is_multihead():
    torch.manual_seed(0)
    a = GPT(tiny(n_kv_head=None)).eval()
    b = GPT(tiny(n_kv_head=4)).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 64, (2, 10))
    assert torch.equal(a(idx)[0], b(idx)[0])


@pytest.mark.parametrize("window", [16, 40])
def test_window_at_least_context_equals_full(window):
    torch.manual_seed(0)
    full = GPT(tiny()).eval()
    win = GPT(tiny(sliding_window=window)).eval()
    win.load_state_dict(full.state_dict())
    idx = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(full(idx)[0], win(idx)[0])


def test_sliding_window_weights_stay_in_window():
    torch.manual_seed(0)
    model = GPT(tiny(sliding_window=[3, None]))
    maps = model.attention_maps(torch.randint(0, 64, (1, 12)))
    t, s = torch.arange(12)[:, None], torch.arange(12)[None, :]
    inside = (t - s >= 0) & (t - s < 3)
    assert torch.all(maps[0][..., ~inside] == 0) and torch.all(maps[0][..., inside] > 0)
    assert torch.all(maps[1][..., t < s] == 0) and torch.all(maps[1][..., t >= s] > 0)


def test_bidirectional_window_is_symmetric():
    torch.manual_seed(0)
    model = GPT(tiny(causal=False, sliding_window=2))
    w = model.attention_maps(torch.randint(0, 64, (1, 8)))[0]
    t, s = torch.arange(8)[:, None], torch.arange(8)[None, :]
    assert torch.all(w[..., (t - s).abs() >= 2] == 0) and torch.all(w[..., (t - s).abs() < 2] > 0)


def test_fully_masked_rows_are_zero_not_nan():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 1, :] = False  # query row 1 may see nothing
    out = attend(q, k, v, mask)
    assert torch.all(out[:, :, 1] == 0) and not out.isnan().any()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.all(attention_weights(q, k, mask)[:, :, 1] == 0)


def rope_complex_reference(x, pos, theta=10000.0):
    """Rotate pairs (i, i + hd/2) as complex numbers by pos * theta^(-2i/hd)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(0, x.shape[-1], 2, dtype=torch.float64) / x.shape[-1])
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    z = z * torch.polar(torch.ones_like(freqs), pos * freqs)
    return torch.cat([z.real, z.imag], -1).float()


def test_rope_matches_complex_rotation_and_keeps_norms():
    torch.manual_seed(0)
    cos, sin = rope_tables(32, 16, 10000.0)
    x = torch.randn(1, 32, 3, 16)  # (B, T, H, hd)
    y = apply_rope(x, cos[:, None], sin[:, None])
    for t in (0, 1, 17, 31):
        torch.testing.assert_close(y[0, t], rope_complex_reference(x[0, t], t), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_rope_dot_product_depends_on_relative_position_only():
    torch.manual_seed(0)
    cos, sin = rope_tables(64, 16, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def rot(x, p):
        return apply_rope(x.view(1, 1, 1, 16), cos[p].view(1, 1, 1, 16), sin[p].view(1, 1, 1, 16))

    def dot(m, n):
        return (rot(q, m) * rot(k, n)).sum()

    for m, n in [(5, 2), (9, 9), (3, 12)]:
        for shift in (1, 7, 40):
            torch.testing.assert_close(dot(m, n), dot(m + shift, n + shift), atol=1e-4, rtol=1e-4)
    assert not torch.isclose(dot(5, 2), dot(5, 3))
