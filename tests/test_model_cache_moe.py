"""KV cache (cached == uncached for every option combination, padding, ring buffers, size) and
the mixture of experts (dense equivalence, load-balancing loss, utilisation, capacity)."""

import itertools

import pytest
import torch

from model.gpt import GPT, GPTConfig
from model.kv_cache import KVCache
from model.moe import MoE


def tiny(**kw):
    base = dict(vocab_size=48, block_size=12, n_layer=2, n_head=4, n_embd=16)
    return GPTConfig(**{**base, **kw})


OPTIONS = list(
    itertools.product(
        ["none", "sinusoidal", "learned", "rope"],  # pos_encoding
        ["pre", "post"],  # norm_placement
        ["gelu", "swiglu"],  # mlp
        [None, 2, 1],  # n_kv_head
        [None, 3, [None, 5]],  # sliding_window
        [0, 3],  # n_expert
    )
)
CHUNKS = [(0, 4), (4, 5), (5, 6), (6, 10), (10, 11), (11, 12)]  # prefill, steps, a chunk


@pytest.mark.parametrize("pos, place, mlp, n_kv, window, n_expert", OPTIONS)
def test_cached_equals_uncached(pos, place, mlp, n_kv, window, n_expert):
    torch.manual_seed(0)
    cfg = tiny(
        pos_encoding=pos,
        norm_placement=place,
        mlp=mlp,
        n_kv_head=n_kv,
        sliding_window=window,
        n_expert=n_expert,
    )
    model = GPT(cfg).eval()
    idx = torch.randint(0, 48, (2, 12))
    ref = model(idx)[0]
    cache = KVCache.for_model(model, 2)
    got = torch.cat([model(idx[:, a:b], kv_cache=cache)[0] for a, b in CHUNKS], dim=1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("window", [None, 3])
def test_padded_cache_equals_rows_alone(pos, window):
    """Left-padded prefill then decode steps: each row matches its own uncached forward."""
    torch.manual_seed(0)
    model = GPT(tiny(pos_encoding=pos, sliding_window=window, n_kv_head=2)).eval()
    rows = [torch.randint(0, 48, (n,)) for n in (7, 3, 5)]
    cont = torch.randint(0, 48, (3, 4))
    idx = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, 7 - len(r) :], mask[b, 7 - len(r) :] = r, 1
    cache = KVCache.for_model(model, 3)
    first = model(idx, kv_cache=cache, attention_mask=mask)[0]
    steps = [model(cont[:, t : t + 1], kv_cache=cache)[0] for t in range(4)]
    for b, r in enumerate(rows):
        ref = model(torch.cat([r, cont[b]])[None])[0][0]
        torch.testing.assert_close(first[b, 7 - len(r) :], ref[: len(r)], atol=1e-5, rtol=1e-5)
        got = torch.cat([s[b] for s in steps])
        torch.testing.assert_close(got, ref[len(r) :], atol=1e-5, rtol=1e-5)


def test_cache_sizes_rings_and_gqa_saving():
    cfg = tiny(n_head=8, n_embd=64, sliding_window=[None, 4])
    full = KVCache(cfg, 2)
    assert full.k[0].shape == (2, 8, 12, 8) and full.k[1].shape == (2, 8, 4, 8)
    gqa = KVCache(tiny(n_head=8, n_embd=64, n_kv_head=2), 2)
    mha = KVCache(tiny(n_head=8, n_embd=64), 2)
    assert mha.nbytes() == 2 * 2 * 2 * 8 * 12 * 8 * 4  # K and V, layers, B, heads, S, hd, fp32
    assert gqa.nbytes() == mha.nbytes() // 4  # 75% smaller


def test_cache_errors():
    model = GPT(tiny()).eval()
    cache = KVCache.for_model(model, 1)
    model(torch.zeros(1, 12, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    cache.reset()
    model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)  # usable again
    with pytest.raises(ValueError, match="kv_cache"):
        model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="causal"):
        KVCache(tiny(causal=False), 1)


# ---------------------------------------------------------------- mixture of experts


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_one_expert_top1_equals_dense(mlp):
    torch.manual_seed(0)
    dense = GPT(tiny(mlp=mlp)).eval()
    moe = GPT(tiny(mlp=mlp, n_expert=1, n_expert_active=1)).eval()
    sd = {}
    for k, v in dense.state_dict().items():
        sd[k.replace(".mlp.", ".mlp.experts.0.")] = v
    for i in range(2):
        sd[f"blocks.{i}.mlp.router.weight"] = moe.state_dict()[f"blocks.{i}.mlp.router.weight"]
    moe.load_state_dict(sd)
    idx = torch.randint(0, 48, (2, 10))
    logits, loss = moe(idx, idx)
    ref_logits, ref_loss = dense(idx, idx)
    torch.testing.assert_close(logits, ref_logits)
    assert moe.aux_loss.item() == pytest.approx(1.0)  # n_expert * f * P = 1 * 1 * 1
    torch.testing.assert_close(loss, ref_loss + 0.01)
    assert moe.expert_utilisation() == [[1.0], [1.0]]


def test_aux_loss_and_utilisation_match_hand_computation():
    torch.manual_seed(0)
    cfg = tiny(n_expert=4, n_expert_active=2)
    layer = MoE(cfg)
    x = torch.randn(3, 5, 16)
    layer(x)
    probs = torch.softmax(x.view(-1, 16) @ layer.router.weight.T, -1)
    top = probs.topk(2, -1).indices
    f = torch.stack([(top == e).float().sum() for e in range(4)]) / top.numel()
    torch.testing.assert_close(layer.utilisation, f)
    torch.testing.assert_close(layer.aux_loss, 4 * (f * probs.mean(0)).sum())
    assert layer.utilisation.sum().item() == pytest.approx(1.0)


def test_moe_output_is_weighted_mix_of_top_k_experts():
    torch.manual_seed(0)
    layer = MoE(tiny(n_expert=4, n_expert_active=2)).eval()
    x = torch.randn(1, 3, 16)
    out = layer(x)
    probs = torch.softmax(x[0] @ layer.router.weight.T, -1)
    for t in range(3):
        p, i = probs[t].topk(2)
        ref = sum(p[j] / p.sum() * layer.experts[i[j]](x[0, t]) for j in range(2))
        torch.testing.assert_close(out[0, t], ref, atol=1e-6, rtol=1e-5)


def test_capacity_drops_tokens_in_training_only():
    torch.manual_seed(0)
    layer = MoE(tiny(n_expert=4, n_expert_active=1, expert_capacity_factor=0.5))
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 10.0  # feature 0 > 0 sends a token to expert 0
    x = torch.randn(1, 40, 16)
    x[..., 0] = x[..., 0].abs() + 1  # every token prefers expert 0
    out = layer(x)
    capacity = 5  # ceil(0.5 * 40 * 1 / 4)
    assert (out[0].abs().sum(-1) > 0).sum().item() == capacity  # the first 5 tokens only
    assert torch.all(out[0, capacity:] == 0)
    assert layer.drop_fraction.item() == pytest.approx(35 / 40)
    layer.eval()
    assert (layer(x)[0].abs().sum(-1) > 0).all()
