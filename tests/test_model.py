"""GPT config, building blocks and whole-model behaviour, against torch references and formulas."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model.gpt import GPT, GPTConfig
from model.layers import RMSNorm, SwiGLU, make_mlp, make_norm, sinusoidal_table, swiglu_hidden


def tiny(**kw):
    base = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **kw})


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("block_size", -1),
        ("n_layer", 1.5),
        ("n_head", 0),
        ("n_kv_head", 3),
        ("n_embd", 30),  # not divisible by n_head=4
        ("dropout", 1.0),
        ("pos_encoding", "alibi"),
        ("norm", "batchnorm"),
        ("norm_placement", "middle"),
        ("mlp", "relu"),
        ("mlp_ratio", 0),
        ("rope_theta", -1.0),
        ("sliding_window", 0),
        ("sliding_window", [4]),  # wrong length for n_layer=2
        ("n_expert", -1),
        ("n_expert_active", 0),
        ("expert_capacity_factor", 0.0),
        ("moe_aux_coef", -0.1),
        ("causal", "yes"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


def test_config_lists_every_problem_and_checks_top_k():
    with pytest.raises(ValueError) as err:
        tiny(n_layer=0, norm="x", n_expert=2, n_expert_active=3)
    msg = str(err.value)
    assert "n_layer" in msg and "norm" in msg and "n_expert_active" in msg
    with pytest.raises(ValueError, match="head size"):
        tiny(n_embd=12, n_head=4)  # rope on head_dim 3


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    cfg = tiny(sliding_window=[None, 4], n_kv_head=2, n_expert=4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert GPTConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig.from_dict({**d, "n_layers": 3})
    assert cfg.windows == [None, 4] and cfg.kv_heads == 2
    assert tiny(sliding_window=16).windows == [None, None]  # window >= block_size = full


# ---------------------------------------------------------------- blocks


def test_rmsnorm_matches_torch():
    torch.manual_seed(0)
    ours, ref = RMSNorm(32, eps=1e-5), torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 32) * 4
    torch.testing.assert_close(ours(x), ref(x))


def test_layernorm_is_torchs():
    torch.manual_seed(0)
    norm = make_norm("layernorm", 32, bias=False)
    assert norm.bias is None
    x = torch.randn(3, 32)
    torch.testing.assert_close(norm(x), F.layer_norm(x, (32,), norm.weight, None, 1e-5))


def test_mlps_match_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32)
    gelu = make_mlp("gelu", 32, 4.0, bias=True, dropout=0.0)
    ref = F.linear(
        F.gelu(F.linear(x, gelu.c_fc.weight, gelu.c_fc.bias)), gelu.c_proj.weight, gelu.c_proj.bias
    )
    torch.testing.assert_close(gelu(x), ref)

    swiglu = make_mlp("swiglu", 32, 4.0, bias=False, dropout=0.0)
    assert isinstance(swiglu, SwiGLU) and swiglu.hidden == 88 == swiglu_hidden(32, 4.0)
    w_gate, w_up = swiglu.c_fc.weight[:88], swiglu.c_fc.weight[88:]
    ref = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ swiglu.c_proj.weight.T
    torch.testing.assert_close(swiglu(x), ref)


def test_sinusoidal_table_matches_formula():
    table = sinusoidal_table(50, 16)
    pos, i = 37, 3
    assert math.isclose(table[pos, 2 * i], math.sin(pos / 10000 ** (2 * i / 16)), abs_tol=1e-6)
    assert math.isclose(table[pos, 2 * i + 1], math.cos(pos / 10000 ** (2 * i / 16)), abs_tol=1e-6)


# ---------------------------------------------------------------- model


def test_init_follows_gpt2():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_embd=256, n_head=4))
    assert abs(model.blocks[0].attn.c_attn.weight.std().item() - 0.02) < 1e-3
    assert abs(model.blocks[0].mlp.c_proj.weight.std().item() - 0.02 / 4) < 3e-4
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()


def expected_non_embedding(cfg):
    C = cfg.n_embd
    attn = C * C * (1 + 2 * cfg.kv_heads / cfg.n_head) + C * C
    mlp = 2 * 4 * C * C
    norms = 2 * C
    return cfg.n_layer * int(attn + mlp + norms) + C  # + final norm


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 1}, {"pos_encoding": "learned"}])
def test_num_params_and_flops(kw):
    cfg = tiny(**kw)
    model = GPT(cfg)
    n = expected_non_embedding(cfg)
    assert model.num_params() == n
    wpe = cfg.block_size * cfg.n_embd if cfg.pos_encoding == "learned" else 0
    assert model.num_params(non_embedding=False) == n + 64 * 32 + wpe
    assert GPT(tiny(tie_embeddings=False, **kw)).num_params() == n
    assert model.flops_per_token(10) == 6 * n + 12 * 2 * 32 * 10
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 16


@pytest.mark.parametrize("pos", ["none", "sinusoidal", "learned", "rope"])
def test_causal_model_ignores_later_tokens_bidirectional_does_not(pos):
    torch.manual_seed(0)
    idx = torch.randint(0, 64, (1, 12))
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % 64
    causal = GPT(tiny(pos_encoding=pos)).eval()
    a, b = causal(idx)[0], causal(changed)[0]
    assert torch.equal(a[:, :8], b[:, :8]) and not torch.allclose(a[:, 8:], b[:, 8:])
    bidir = GPT(tiny(pos_encoding=pos, causal=False)).eval()
    a, b = bidir(idx)[0], bidir(changed)[0]
    assert not torch.allclose(a[:, :8], b[:, :8])


def test_post_ln_has_no_final_norm_and_runs():
    model = GPT(tiny(norm_placement="post", norm="rmsnorm"))
    assert model.ln_f is None
    logits, loss = model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
    assert logits.shape == (2, 8, 64) and torch.isfinite(loss)


@pytest.mark.parametrize("pos", ["none", "sinusoidal", "learned", "rope"])
def test_padding_gives_the_unpadded_logits(pos):
    """Left padding + attention_mask: the real tokens see what they would see alone."""
    torch.manual_seed(0)
    model = GPT(tiny(pos_encoding=pos, n_kv_head=2, sliding_window=[None, 3])).eval()
    seq = torch.randint(0, 64, (1, 7))
    alone = model(seq)[0]
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq], 1)
    mask = torch.tensor([[0] * 4 + [1] * 7])
    logits = model(padded, attention_mask=mask)[0]
    torch.testing.assert_close(logits[:, 4:], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all()


def test_right_padding_with_ignored_targets_gives_the_same_loss():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    seq = torch.randint(0, 64, (1, 9))
    _, ref = model(seq[:, :-1], seq[:, 1:])
    idx = torch.cat([seq[:, :-1], torch.zeros(1, 3, dtype=torch.long)], 1)
    tgt = torch.cat([seq[:, 1:], torch.full((1, 3), -100)], 1)
    mask = torch.tensor([[1] * 8 + [0] * 3])
    _, loss = model(idx, tgt, attention_mask=mask)
    torch.testing.assert_close(loss, ref)


def test_fully_padded_row_is_finite():
    model = GPT(tiny())
    mask = torch.tensor([[0] * 6, [1] * 6])
    logits, loss = model(
        torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.long), attention_mask=mask
    )
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_input_errors_name_the_argument():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="idx"):
        model(torch.zeros(1, 17, dtype=torch.long))  # longer than block_size
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))


OVERFIT_OPTIONS = [
    {},
    {"pos_encoding": "none"},
    {"pos_encoding": "sinusoidal"},
    {"pos_encoding": "learned", "tie_embeddings": False},
    {"norm": "rmsnorm"},
    {"norm_placement": "post"},
    {"mlp": "swiglu"},
    {"n_kv_head": 1},
    {"sliding_window": 4},
    {"causal": False},
    {"n_expert": 4, "n_expert_active": 2},
    {"n_expert": 4, "n_expert_active": 1, "expert_capacity_factor": 1.0},
    {"dropout": 0.1, "bias": True},
]


@pytest.mark.parametrize("kw", OVERFIT_OPTIONS, ids=lambda kw: ",".join(kw) or "default")
def test_loss_decreases_when_overfitting_one_batch(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx, tgt = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(15):
        _, loss = model(idx, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
