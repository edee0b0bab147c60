"""PPO pieces (model/ppo.py): the details that decide whether RLHF works at all."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from model.generation import generate
from model.gpt import GPT, GPTConfig
from model.ppo import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    kl_k1,
    kl_k3,
    last_true_index,
    leave_one_out,
    logprobs_from_logits,
    make_kl_controller,
    masked_mean,
    masked_whiten,
    pack,
    policy_loss,
    sequence_logits,
    shape_rewards,
    value_loss,
)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)
    return GPT(config).eval()


def stage_models() -> dict:
    """The four models of the ppo stage around a tiny policy: a frozen copy as the reference,
    a frozen random reward model, and the value model made from it."""
    from model.reward import ScalarHeadModel
    from tasks.ppo import freeze, value_model_from_reward

    policy = tiny_gpt()
    torch.manual_seed(1)
    rm = freeze(ScalarHeadModel(policy.config))
    return {
        "policy": policy,
        "ref": freeze(copy.deepcopy(policy)),
        "reward": rm,
        "value": value_model_from_reward(rm),
    }


def random_mask(B: int, R: int, gen: torch.Generator) -> torch.Tensor:
    """Rows of real tokens with padding on either side (and at least one real token)."""
    mask = torch.zeros(B, R, dtype=torch.bool)
    for b in range(B):
        n = int(torch.randint(1, R + 1, (1,), generator=gen))
        start = int(torch.randint(0, R - n + 1, (1,), generator=gen))
        mask[b, start : start + n] = True
    return mask


# ---------------------------------------------------------------------- log-probs and KL


def test_logprobs_match_log_softmax_at_temperature():
    logits = torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    got = logprobs_from_logits(logits, targets, temperature=0.7)
    want = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(got, want)
    probs = torch.softmax(logits / 0.7, -1)
    torch.testing.assert_close(
        entropy_from_logits(logits, 0.7), -(probs * probs.log()).sum(-1), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, targets, temperature=0)


def test_kl_zero_and_ratio_one_before_first_update():
    """Policy and its frozen copy agree exactly on fresh rollouts: KL 0, ratio 1, no clipping."""
    policy = tiny_gpt()
    ref = copy.deepcopy(policy)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    responses = generate(policy, prompts, 6, temperature=0.8, eos_id=11, seed=0)
    responses = [r or [11] for r in responses]
    tokens, attn, action = pack(prompts, responses, pad_id=0)
    targets = tokens[:, 1:]
    with torch.no_grad():
        old = logprobs_from_logits(sequence_logits(policy, tokens, attn), targets, 0.8)
        ref_logp = logprobs_from_logits(sequence_logits(ref, tokens, attn), targets, 0.8)
    new = logprobs_from_logits(sequence_logits(policy, tokens, attn), targets, 0.8)
    assert masked_mean(kl_k1(old, ref_logp), action).item() == 0.0
    assert masked_mean(kl_k3(old, ref_logp), action).item() == 0.0
    loss, stats = policy_loss(new, old, torch.randn_like(new), action)
    assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["clip_frac"].item() == 0.0
    assert stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-10)
    loss.backward()  # and the loss has a gradient path to the policy
    assert policy.lm_head.weight.grad is not None


def test_pack_marks_response_actions_only():
    tokens, attn, action = pack([[1, 2], [3, 4, 5]], [[6, 7, 8], [9]], pad_id=0)
    assert tokens.tolist() == [[1, 2, 6, 7, 8], [3, 4, 5, 9, 0]]
    assert attn.tolist() == [[True] * 5, [True] * 4 + [False]]
    # logits at t choose token t + 1: row 0 chooses 6, 7, 8 at t = 1, 2, 3
    assert action.tolist() == [[False, True, True, True], [False, False, True, False]]
    with pytest.raises(ValueError, match="at least one token"):
        pack([[1]], [[]], pad_id=0)


def test_k3_is_nonnegative_and_k1_is_unbiased_on_average():
    gen = torch.Generator().manual_seed(0)
    logits_p, logits_q = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    p, q = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
    samples = torch.multinomial(p.exp(), 200_000, replacement=True, generator=gen)
    k1, k3 = kl_k1(p[samples], q[samples]), kl_k3(p[samples], q[samples])
    exact = (p.exp() * (p - q)).sum()
    assert (k3 >= 0).all()
    assert k1.mean().item() == pytest.approx(exact.item(), rel=0.05)
    assert k3.mean().item() == pytest.approx(exact.item(), rel=0.05)


# ---------------------------------------------------------------------- masked statistics


def test_whitening_ignores_padded_positions():
    x = torch.tensor([[1.0, 2.0, 3.0, 1e6], [-1e6, 4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    out = masked_whiten(x, mask)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    want = (real - real.mean()) / real.var(unbiased=False).sqrt()
    torch.testing.assert_close(out[mask], want)
    assert out[~mask].tolist() == [0.0, 0.0]
    # changing what sits under the padding changes nothing
    torch.testing.assert_close(masked_whiten(x.masked_fill(~mask, 7.0), mask), out)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(3.5, rel=1e-5)


def test_last_true_index_any_padding_side():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    assert last_true_index(mask).tolist() == [1, 3, 1]
    with pytest.raises(ValueError, match="at least one real token"):
        last_true_index(torch.zeros(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------------- reward shaping


def test_score_sits_on_last_real_token_whatever_the_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    scores, ended = torch.tensor([2.0, -3.0]), torch.tensor([True, True])
    zeros = torch.zeros(2, 5)
    for mask, last in ((right, [2, 4]), (left, [4, 4])):
        rewards, given = shape_rewards(zeros, zeros, mask, scores, ended, kl_coef=0.1)
        expected = torch.zeros(2, 5)
        expected[0, last[0]], expected[1, last[1]] = 2.0, -3.0
        torch.testing.assert_close(rewards, expected)
        torch.testing.assert_close(given, scores)


def test_kl_penalty_on_real_tokens_only():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0]])
    mask = torch.tensor([[True, True, False]])
    rewards, _ = shape_rewards(logp, ref, mask, torch.tensor([1.0]), torch.tensor([True]), 0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.25, 1.0, 0.0]]))


def test_responses_without_end_token_get_the_penalty():
    mask = torch.ones(3, 4, dtype=torch.bool)
    scores = torch.tensor([1.0, 1.0, -0.5])
    ended = torch.tensor([True, False, False])
    zeros = torch.zeros(3, 4)
    rewards, given = shape_rewards(zeros, zeros, mask, scores, ended, 0.0, no_end_penalty=2.0)
    torch.testing.assert_close(given, torch.tensor([1.0, -1.0, -2.5]))
    torch.testing.assert_close(rewards[:, -1], given)
    assert rewards[:, :-1].abs().sum().item() == 0.0


# ---------------------------------------------------------------------- GAE


def gae_reference(rewards, values, mask, gamma, lam):
    """Plain Python recursion over each row's real tokens, in order."""
    B, R = len(rewards), len(rewards[0])
    adv = [[0.0] * R for _ in range(B)]
    for b in range(B):
        steps = [t for t in range(R) if mask[b][t]]
        running, next_value = 0.0, 0.0
        for t in reversed(steps):
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            running = delta + gamma * lam * running
            adv[b][t] = running
            next_value = values[b][t]
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_plain_recursion(gamma, lam):
    gen = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    B, R = 6, 9
    rewards, values = torch.randn(B, R, generator=gen), torch.randn(B, R, generator=gen)
    mask = random_mask(B, R, gen)
    mask[0, 2] = False  # a gap inside a row is skipped, not a step
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want = torch.tensor(gae_reference(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam))
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, (want + values) * mask)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.5, 0.3, 0.2]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[0.9, 0.8, 1.0]]))
    torch.testing.assert_close(adv, ret - values)


# ---------------------------------------------------------------------- losses


def test_clipped_value_loss_is_elementwise_max():
    gen = torch.Generator().manual_seed(1)
    v, old, ret = (torch.randn(4, 5, generator=gen) for _ in range(3))
    mask = random_mask(4, 5, gen)
    loss, stats = value_loss(v, old, ret, mask, clip=0.2)
    clipped = old + (v - old).clamp(-0.2, 0.2)
    per_token = [
        max((a - g) ** 2, (c - g) ** 2)
        for a, c, g, m in zip(
            v.flatten(), clipped.flatten(), ret.flatten(), mask.flatten(), strict=True
        )
        if m
    ]
    assert loss.item() == pytest.approx(0.5 * sum(per_token).item() / len(per_token), rel=1e-5)
    assert 0.0 <= stats["value_clip_frac"].item() <= 1.0
    # within the clip range the loss is plain squared error
    loss_near, _ = value_loss(old + 0.01, old, ret, mask, clip=0.2)
    plain = 0.5 * masked_mean((old + 0.01 - ret) ** 2, mask)
    assert loss_near.item() == pytest.approx(plain.item(), rel=1e-5)


def test_policy_loss_clips_and_counts():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, stats = policy_loss(new, old, adv, mask, clip=0.2)
    # per token max(-A r, -A clip(r)): -1.2, 0.8, -1.1, 1.5
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1 + 1.5) / 4, rel=1e-5)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------- KL controllers


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 1000)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(3.0, 1000)  # -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    assert math.isclose(make_kl_controller("fixed", 0.3).value, 0.3)
    with pytest.raises(ValueError, match="kl_control"):
        make_kl_controller("pid", 0.1)
    with pytest.raises(ValueError, match="kl_target"):
        make_kl_controller("adaptive", 0.1)


def test_reference_model_gets_no_gradients():
    """The frozen reference, used as in tasks.ppo, never accumulates a gradient."""
    from tasks.ppo import freeze

    policy = tiny_gpt()
    ref = freeze(copy.deepcopy(policy))
    tokens, attn, action = pack([[1, 2, 3]], [[4, 5]], pad_id=0)
    targets = tokens[:, 1:]
    new = logprobs_from_logits(sequence_logits(policy, tokens, attn), targets)
    # no torch.no_grad here on purpose: freezing alone must keep the reference out of autograd
    ref_logp = logprobs_from_logits(sequence_logits(ref, tokens, attn), targets)
    assert not ref_logp.requires_grad
    loss = masked_mean(kl_k1(new, ref_logp), action) + masked_mean(new, action)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in ref.parameters())
    assert not ref.training
    assert any(p.grad is not None for p in policy.parameters())


# ---------------------------------------------------------------------- stages


@pytest.mark.slow
def test_reward_and_ppo_stages_on_quick_profile(quick_pretrained, tmp_path):
    """instruct -> sft -> reward -> ppo on the quick profile: outputs, metrics and curves."""
    import json

    from tasks.checkpoint import load_checkpoint
    from tasks.reward import load_reward_model
    from tests.conftest import copy_repo, run_in

    repo = copy_repo(quick_pretrained, tmp_path / "r")
    for stage in ("instruct", "sft", "reward", "ppo"):
        run_in(repo, "-m", f"tasks.{stage}")

    reward = json.loads((repo / "metrics" / "reward.json").read_text())
    assert 0.0 <= reward["pairwise_accuracy_all"] <= 1.0 and reward["eval_pairs_all"] > 0
    rm = load_reward_model(repo / "out" / "reward")
    assert rm.scale.item() == pytest.approx(reward["score_scale"], rel=1e-4)

    ppo = json.loads((repo / "metrics" / "ppo.json").read_text())
    keys = ("sft_test_accuracy", "ppo_test_accuracy", "ppo_test_sampled_accuracy", "final_kl")
    for key in (*keys, "sft_test_rm_score"):
        assert math.isfinite(ppo[key])
    assert ppo["test_accuracy_gain"] == pytest.approx(
        ppo["ppo_test_accuracy"] - ppo["sft_test_accuracy"], abs=1e-4
    )
    # fixed minus broken prompts is the change in held-out hits
    assert ppo["test_fixed"] - ppo["test_broken"] == round(
        ppo["test_accuracy_gain"] * ppo["test_prompts"]
    )
    assert 0.0 < ppo["test_p_value"] <= 1.0
    assert 0.0 <= ppo["sft_seen_accuracy"] <= 1.0 and 0.0 <= ppo["ppo_seen_accuracy"] <= 1.0
    policy, sft = load_checkpoint(repo / "out" / "ppo"), load_checkpoint(repo / "out" / "sft")
    assert any(
        not torch.equal(a, b) for a, b in zip(policy.parameters(), sft.parameters(), strict=True)
    )
    rows = (repo / "plots" / "ppo" / "train.csv").read_text().splitlines()
    assert rows[0].startswith("step,rm_score,accuracy,kl")
    assert len(rows) == 1 + 3  # the quick profile runs 3 iterations


def test_stage_rollout_has_zero_kl_and_unit_ratio_on_minibatches():
    """Through tasks.ppo itself: rollout scoring, then a cropped shuffled minibatch re-scored by
    the (not yet updated) policy gives ratio 1; the value model starts at the RM's score."""
    from types import SimpleNamespace

    from model.reward import ScalarHeadModel
    from tasks.ppo import crop, freeze, minibatches, score_rollout, value_model_from_reward

    policy = tiny_gpt()
    torch.manual_seed(1)
    rm = ScalarHeadModel(policy.config)
    rm.set_normalisation(torch.tensor([0.3, -0.2, 0.9]))
    models = {
        "policy": policy,
        "ref": freeze(copy.deepcopy(policy)),
        "reward": freeze(rm),
        "value": value_model_from_reward(rm),
    }
    tok = SimpleNamespace(pad_id=0, end_id=11)
    p = SimpleNamespace(
        temperature=0.7, no_end_penalty=1.0, gamma=1.0, lam=0.95, max_new_tokens=6, baseline="none"
    )
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [12]]
    responses = [[13, 14, 11], [15], [16, 17, 18, 19], [20, 11]]
    rollout, stats = score_rollout(models, tok, prompts, responses, p, 0.1, "cpu")
    assert stats["kl"] == 0.0 and stats["kl_k3"] == 0.0
    assert stats["end_rate"] == 0.5
    tokens, attn, _ = pack(prompts, responses, 0)
    with torch.no_grad():
        torch.testing.assert_close(
            models["value"].values(tokens, attn)[torch.arange(4), attn.sum(1) - 1],
            rm.score(tokens, attn),
        )
    for rows in minibatches(4, 3, torch.Generator().manual_seed(0)):
        mb = crop(rollout, rows)
        logits = sequence_logits(policy, mb.tokens, mb.attention_mask)
        logp = logprobs_from_logits(logits, mb.tokens[:, 1:], 0.7)
        _, st = policy_loss(logp, mb.logp, mb.advantages, mb.action_mask)
        assert st["ratio"].item() == pytest.approx(1.0, abs=1e-5)
        assert st["clip_frac"].item() == 0.0


def test_checker_reward_replaces_the_score_and_the_rm_score_is_still_reported():
    """ppo.reward: checker gives +1 / -1 by the checkers' verdict at the last real token (minus
    the no-end penalty), while `rm_score` stays the reward model's own score."""
    from types import SimpleNamespace

    from tasks.ppo import checker_scores, score_rollout

    models = stage_models()
    rm = models["reward"]
    tok = SimpleNamespace(pad_id=0, end_id=11)
    p = SimpleNamespace(temperature=1.0, no_end_penalty=0.5, gamma=1.0, lam=0.95, baseline="none")
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8]]
    responses = [[13, 11], [15, 16], [17, 11]]  # the second never ends
    scores = checker_scores([True, True, False], "cpu")
    torch.testing.assert_close(scores, torch.tensor([1.0, 1.0, -1.0]))

    _, with_rm = score_rollout(models, tok, prompts, responses, p, 0.0, "cpu")
    _, with_checker = score_rollout(models, tok, prompts, responses, p, 0.0, "cpu", scores)
    assert with_checker["reward"] == pytest.approx((1.0 + 0.5 - 1.0) / 3)
    assert with_checker["rm_score"] == pytest.approx(with_rm["rm_score"])
    tokens, attn, _ = pack(prompts, responses, 0)
    assert with_rm["rm_score"] == pytest.approx(rm.score(tokens, attn).mean().item())


def test_leave_one_out_matches_a_loop_and_ignores_a_prompt_offset():
    gen = torch.Generator().manual_seed(0)
    k = 4
    scores = torch.randn(12, generator=gen)
    want = torch.tensor(
        [
            scores[i]
            - sum(scores[j] for j in range(i // k * k, i // k * k + k) if j != i) / (k - 1)
            for i in range(12)
        ]
    )
    got = leave_one_out(scores, k)
    torch.testing.assert_close(got, want)
    # a score shared by a prompt's responses (its offset) cancels; each group sums to zero
    offsets = torch.tensor([5.0, -3.0, 0.5]).repeat_interleave(k)
    torch.testing.assert_close(leave_one_out(scores + offsets, k), got)
    torch.testing.assert_close(got.view(-1, k).sum(1), torch.zeros(3), atol=1e-6, rtol=0)
    for bad in (1, 5):
        with pytest.raises(ValueError, match="groups of"):
            leave_one_out(scores, bad)


def test_rollout_with_the_leave_one_out_baseline_gives_the_score_less_the_others_mean():
    from types import SimpleNamespace

    from tasks.ppo import score_rollout

    models = stage_models()
    tok = SimpleNamespace(pad_id=0, end_id=11)
    p = SimpleNamespace(
        temperature=1.0,
        no_end_penalty=0.0,
        gamma=1.0,
        lam=0.95,
        baseline="leave_one_out",
        samples_per_prompt=2,
    )
    prompts = [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]]
    responses = [[13, 11], [14, 11], [15, 11], [16, 17, 11]]
    scores = torch.tensor([1.0, -1.0, -1.0, -1.0])
    _, stats = score_rollout(models, tok, prompts, responses, p, 0.0, "cpu", scores)
    # given: [1 - (-1), -1 - 1, 0, 0]; their mean is 0
    assert stats["reward"] == pytest.approx(0.0, abs=1e-6)
    rollout, _ = score_rollout(models, tok, prompts, responses, p, 0.0, "cpu", scores + 3.0)
    same, _ = score_rollout(models, tok, prompts, responses, p, 0.0, "cpu", scores)
    torch.testing.assert_close(rollout.returns, same.returns)


def test_ppo_params_reject_groups_that_do_not_divide_the_rollout():
    from pydantic import ValidationError

    from tasks.params import PPOParams

    with pytest.raises(ValidationError, match="multiple of samples_per_prompt"):
        PPOParams(rollout_batch=10, samples_per_prompt=4)
    with pytest.raises(ValidationError, match="samples_per_prompt >= 2"):
        PPOParams(baseline="leave_one_out")
    assert PPOParams(rollout_batch=64, samples_per_prompt=4, baseline="leave_one_out")


def test_draw_is_seeded_without_repeats_and_seen_prompts_are_the_drawn_ones():
    from types import SimpleNamespace

    from model.instruct import make_examples
    from tasks.params import PPOParams
    from tasks.ppo import draw, seen_prompts

    pool = make_examples(0, 30, "train", ["first", "count"])
    p = PPOParams(rollout_batch=16, samples_per_prompt=4, iterations=3, eval_prompts_per_family=2)
    drawn = draw(pool, p, seed=5, it=1)
    assert len(drawn) == 4 and len({ex.prompt for ex in drawn}) == 4
    assert [ex.prompt for ex in draw(pool, p, 5, 1)] == [ex.prompt for ex in drawn]
    assert [ex.prompt for ex in draw(pool, p, 5, 2)] != [ex.prompt for ex in drawn]
    seen = seen_prompts(pool, SimpleNamespace(ppo=p, seed=5))
    every = {ex.prompt for it in (1, 2, 3) for ex in draw(pool, p, 5, it)}
    assert {ex.prompt for ex in seen} <= every
    for family in ("first", "count"):
        n_drawn = sum(1 for ex in pool if ex.prompt in every and ex.family == family)
        assert sum(ex.family == family for ex in seen) == min(2, n_drawn)


def test_paired_change_counts_fixed_and_broken_prompts_with_the_exact_mcnemar_p_value():
    from tasks.ppo import paired_change

    before = [False] * 8 + [True] * 4
    after = [True] * 8 + [True] * 4
    # 8 fixed, 0 broken: two-sided binomial tail 2 * 0.5**8
    assert paired_change(before, after) == pytest.approx(
        {"fixed": 8, "broken": 0, "p_value": 2 * 0.5**8}
    )
    change = paired_change([True, False, True, False], [False, True, True, False])
    assert change == {"fixed": 1, "broken": 1, "p_value": 1.0}
    assert paired_change([True, False], [True, False])["p_value"] == 1.0  # nothing changed
