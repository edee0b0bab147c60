"""Reward model (model/reward.py), the pairs loader (tasks/reward.py) and the reward and ppo
stages on the quick profile."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model.chat import extract_response
from model.gpt import GPTConfig
from model.reward import ScalarHeadModel, bradley_terry_loss, pairwise_accuracy
from tasks.pairs import load_pairs_jsonl


def tiny_rm(seed: int = 0) -> ScalarHeadModel:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)
    return ScalarHeadModel(config).eval()


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.5, 1.0])
    want = -(
        math.log(1 / (1 + math.exp(-1.0)))
        + math.log(1 / (1 + math.exp(0.5)))
        + math.log(1 / (1 + math.exp(2.0)))
    )
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(want / 3, rel=1e-6)
    assert pairwise_accuracy(chosen, rejected) == pytest.approx(1 / 3)
    # equal scores: log 2, the loss of a coin flip
    assert bradley_terry_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2))


def test_centering_term_adds_the_squared_pair_sum_and_pulls_offsets_to_zero():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.5, 1.0])
    plain = bradley_terry_loss(chosen, rejected)
    sums = torch.tensor([3.0, 0.5, 0.0])
    want = plain + 0.1 * sums.pow(2).mean()
    assert bradley_terry_loss(chosen, rejected, 0.1).item() == pytest.approx(want.item())
    # the pairwise loss is blind to a shift shared by both sides; the centering term is not
    shift = torch.tensor([5.0, -3.0, 2.0])
    assert bradley_terry_loss(chosen + shift, rejected + shift).item() == pytest.approx(
        plain.item(), rel=1e-6
    )
    offsets = torch.tensor([4.0, -6.0, 1.0], requires_grad=True)
    opt = torch.optim.SGD([offsets], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        bradley_terry_loss(chosen + offsets, rejected + offsets, 0.1).backward()
        opt.step()
    centred = (chosen + offsets + rejected + offsets).detach()
    assert centred.abs().max().item() < 1e-3


def test_score_reads_last_real_token_with_left_or_right_padding():
    rm = tiny_rm()
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    pad = 0
    right = torch.tensor([rows[0], rows[1] + [pad, pad]])
    right_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]], dtype=torch.bool)
    left = torch.tensor([rows[0], [pad, pad] + rows[1]])
    left_mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        alone = torch.stack([rm.score(torch.tensor([r])) for r in rows]).squeeze(-1)
        got_right = rm.score(right, right_mask)
        got_left = rm.score(left, left_mask)
        per_token = rm.values(torch.tensor([rows[1]]))
    torch.testing.assert_close(got_right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_left, alone, atol=1e-5, rtol=1e-5)
    # the score is the value at the last real token, not at a pad position
    assert got_right[1].item() == pytest.approx(per_token[0, -1].item(), abs=1e-5)
    # and what sits under the padding does not matter
    with torch.no_grad():
        other = rm.score(right.masked_fill(~right_mask, 33), right_mask)
    torch.testing.assert_close(other, got_right)


def test_normalisation_travels_with_the_weights(tmp_path):
    from safetensors.torch import load_model, save_model

    rm = tiny_rm()
    raw = torch.tensor([1.0, 2.0, 3.0, 6.0])
    rm.set_normalisation(raw)
    assert rm.offset.item() == pytest.approx(3.0)
    assert rm.scale.item() == pytest.approx(raw.std().item())
    save_model(rm, str(tmp_path / "m.safetensors"))
    fresh = tiny_rm(seed=1)
    load_model(fresh, str(tmp_path / "m.safetensors"))
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.score(idx), rm.score(idx))
        torch.testing.assert_close(fresh.score(idx), (rm.raw_score(idx) - 3.0) / rm.scale)


def test_bt_training_separates_pairs():
    """A few steps of the pairwise loss rank the chosen token above the rejected one."""
    rm = tiny_rm()
    rm.train()
    opt = torch.optim.Adam(rm.parameters(), lr=1e-2)
    chosen = torch.tensor([[1, 2, 3, 4]] * 4)
    rejected = torch.tensor([[1, 2, 3, 5]] * 4)
    for _ in range(20):
        loss = bradley_terry_loss(rm.score(chosen), rm.score(rejected))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    assert pairwise_accuracy(rm.score(chosen), rm.score(rejected)) == 1.0


# ---------------------------------------------------------------------- JSONL pairs


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_response_logprob_sums_the_response_tokens_whatever_the_padding():
    from model.gpt import GPT
    from tasks.pairs import Pair
    from tasks.reward import loglik_baseline, response_logprob

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    pairs = [
        Pair([1, 2, 3], [4, 5], [6], "f", "sampled"),
        Pair([7], [8, 9, 10], [11, 12], "f", "x"),
    ]
    got = response_logprob(gpt, pairs, "chosen", pad_id=0, device="cpu")
    for q, value in zip(pairs, got, strict=True):
        row = torch.tensor([q.prompt + q.chosen])
        logp = torch.log_softmax(gpt(row)[0][0].float(), dim=-1)
        want = sum(logp[len(q.prompt) - 1 + i, t] for i, t in enumerate(q.chosen))
        assert value.item() == pytest.approx(want.item(), abs=1e-5)
    out = loglik_baseline(gpt, pairs, pad_id=0, device="cpu")
    assert set(out) == {"policy_loglik_accuracy"} and 0 <= out["policy_loglik_accuracy"] <= 1


def test_pairs_loader_reads_records(tmp_path):
    rec = {"prompt": "Say hi", "chosen": "hi", "rejected": "bye"}
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(rec), "", json.dumps(rec)])
    assert load_pairs_jsonl(path) == [rec, rec]


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "p.jsonl:1: not valid JSON"),
        ('{"prompt": "a", "chosen": "b"}', "p.jsonl:1: expected exactly the keys"),
        ('{"prompt": "a", "chosen": "b", "rejected": 3}', r"\['rejected'\] must be strings"),
        ('{"prompt": " ", "chosen": "b", "rejected": "c"}', "empty 'prompt'"),
        ('{"prompt": "a", "chosen": "b", "rejected": "b"}', "are the same text"),
        ("[1, 2]", "expected exactly the keys"),
    ],
)
def test_pairs_loader_errors_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "p.jsonl", [line])
    with pytest.raises(ValueError, match=message):
        load_pairs_jsonl(path)


def test_pairs_loader_missing_empty_and_binary(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_pairs_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no preference pairs"):
        load_pairs_jsonl(write_lines(tmp_path / "e.jsonl", [""]))
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_pairs_jsonl(tmp_path / "b.jsonl")


def test_swapped_pairs_reject_another_prompts_answer():
    from model.instruct import check, make_examples, reference_answer
    from model.tokenizer import Tokenizer
    from tasks.pairs import swapped_pairs

    examples = make_examples(0, 6, "train", ["copy", "count"])
    tok = Tokenizer.train([" ".join(ex.prompt for ex in examples)], 300)
    pairs = swapped_pairs(tok, examples, 3, seed=0)
    assert len(pairs) == 3 * len(examples) and {q.source for q in pairs} == {"swapped"}
    by_prompt = {}
    for ex in examples:
        by_prompt.setdefault(ex.family, []).append(ex)
    for q in pairs:
        ex = next(e for e in by_prompt[q.family] if q.prompt == swapped_prompt(tok, e))
        (chosen, _), (rejected, _) = (extract_response(tok, r) for r in (q.chosen, q.rejected))
        assert q.chosen[-1] == q.rejected[-1] == tok.end_id
        assert check(ex, chosen) and not check(ex, rejected)
        # the rejected side is a real answer of the same family
        assert rejected in {reference_answer(o) for o in by_prompt[q.family]}


def test_near_miss_pairs_reject_a_wrong_answer_of_the_same_prompt():
    from model.instruct import check, make_examples
    from model.tokenizer import Tokenizer
    from tasks.pairs import near_miss_pairs

    examples = make_examples(0, 5, "train", ["first", "next", "sort"])
    tok = Tokenizer.train([" ".join(ex.prompt for ex in examples)], 300)
    pairs = near_miss_pairs(tok, examples, 2, seed=0)
    assert len(pairs) == 2 * len(examples) and {q.source for q in pairs} == {"near"}
    for ex, (a, b) in zip(examples, zip(pairs[::2], pairs[1::2], strict=True), strict=True):
        assert a.prompt == b.prompt == swapped_prompt(tok, ex) and a.chosen == b.chosen
        assert a.rejected != b.rejected
        for q in (a, b):
            (chosen, _), (rejected, _) = (extract_response(tok, r) for r in (q.chosen, q.rejected))
            assert check(ex, chosen) and not check(ex, rejected)


def swapped_prompt(tok, example):
    from model.chat import encode_prompt

    return encode_prompt(tok, list(example.messages))
