"""ppo stage: align the SFT policy against the reward model with PPO and a KL penalty.

Each iteration: draw `rollout_batch / samples_per_prompt` train prompts; sample
`samples_per_prompt` responses each with the KV cache at `temperature`; score the rows with
the policy, the frozen SFT reference, the value model and the reward model; build per-token
rewards (-kl_coef * (log p - log p_ref) on every response token, the reward-model score on the
last real token, minus `no_end_penalty` when the response never closed its turn; with
`baseline: leave_one_out`, the score less the mean score of the prompt's other responses);
GAE (gamma, lam) and advantages whitened over real tokens; then
`ppo_epochs` passes of shuffled minibatches of the clipped policy loss and the clipped value
loss. Every model stays in eval mode (dropout off) throughout, while rollouts and updates run.
The value model starts as the reward model (its score normalisation folded into the head).
`ppo.reward: checker` swaps the reward model's score for the task checkers' verdict (+1 right,
-1 wrong: a verifiable reward, and an upper bound on what a perfect reward model could give);
the reward model still scores every rollout, so the two can be compared.
True task accuracy comes from the checkers: on each rollout (sampled) and every `eval_interval`
iterations on held-out test prompts (greedy, as the sft stage measures it), next to the
reward-model score of the same responses, so reward hacking shows as a score that rises while
accuracy does not. At the end, greedy accuracy on prompts the rollouts drew (SFT reference vs
policy) sits beside the held-out one: a gain on seen prompts alone is memorised instances.
The held-out change is also counted per prompt (fixed, broken) with the exact McNemar p-value.

    python -m tasks.ppo
Writes out/ppo/ (a checkpoint like out/sft, plus samples.txt), metrics/ppo.json (SFT and PPO
held-out accuracy and RM score side by side, KL at the end) and plots/ppo/{train,eval}.csv.
Leaves out: resume (a run takes minutes), entropy bonus, reward whitening across batches.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest

from model.chat import encode_prompt, extract_response, respond
from model.generation import generate
from model.instruct import Example, check, exact_match_by_family
from model.ppo import (
    entropy_from_logits,
    gae,
    kl_k1,
    kl_k3,
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
from model.reward import ScalarHeadModel
from model.tokenizer import Tokenizer
from tasks import registry, tracking
from tasks.checkpoint import TOKENIZER_FILE, load_checkpoint, save_checkpoint
from tasks.common import log, resolve_device, run_stage, seed_everything
from tasks.instruct import read_examples, read_prompts
from tasks.io import METRICS, OUT, PLOTS, write_json, write_text
from tasks.pairs import per_family
from tasks.params import PPOParams, load_params
from tasks.reward import OUT_DIR as REWARD_DIR
from tasks.reward import SFT_DIR, load_reward_model, score_responses

OUT_DIR = OUT / "ppo"
TRAIN_COLUMNS = (
    "rm_score",
    "accuracy",
    "kl",
    "kl_k3",
    "kl_coef",
    "entropy",
    "clip_frac",
    "approx_kl",
    "value_loss",
    "policy_loss",
    "response_length",
    "end_rate",
)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """No gradients and eval mode: the reference and the reward model never change."""
    model.requires_grad_(False)
    return model.eval()


def value_model_from_reward(rm: ScalarHeadModel) -> ScalarHeadModel:
    """A trainable copy of the reward model whose per-token values are in normalised score
    units: (w h + b - offset) / scale folded into the head."""
    vm = copy.deepcopy(rm).requires_grad_(True)
    with torch.no_grad():
        vm.head.weight /= rm.scale
        vm.head.bias.sub_(rm.offset).div_(rm.scale)
        vm.offset.zero_()
        vm.scale.fill_(1.0)
    return vm.eval()


@dataclass
class Rollout:
    """One batch of experience; per-token tensors are (B, T - 1) at the action positions."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


# ---------------------------------------------------------------------- rollouts


def sample(policy, tok, prompts: list[list[int]], p: PPOParams, seed: int) -> list[list[int]]:
    responses = generate(
        policy, prompts, p.max_new_tokens, temperature=p.temperature, eos_id=tok.end_id, seed=seed
    )
    return [r or [tok.end_id] for r in responses]  # max_new_tokens >= 1: never empty


def checker_scores(hits: list[bool], device) -> torch.Tensor:
    """The checkers' verdicts as scores (B,): +1 right, -1 wrong (the reward model's scores have
    mean 0 and std 1 on policy samples, so both live on the same scale)."""
    return torch.tensor([1.0 if h else -1.0 for h in hits], device=device)


@torch.no_grad()
def score_rollout(
    models: dict, tok, prompts, responses, p: PPOParams, kl_coef: float, device, scores=None
):
    """Log-probs, values, rewards and advantages of sampled responses; and per-row stats.

    `scores` (B,), when given, is the reward in place of the reward model's score (which is
    still computed and reported as `rm_score`)."""
    tokens, attn, action = pack(prompts, responses, tok.pad_id, device)
    targets = tokens[:, 1:]
    logits = sequence_logits(models["policy"], tokens, attn)
    logp = logprobs_from_logits(logits, targets, p.temperature)
    entropy = entropy_from_logits(logits, p.temperature)
    ref_logp = logprobs_from_logits(
        sequence_logits(models["ref"], tokens, attn), targets, p.temperature
    )
    values = models["value"].values(tokens, attn)[:, :-1]
    rm_scores = models["reward"].score(tokens, attn)
    scores = rm_scores if scores is None else scores
    if p.baseline == "leave_one_out":
        scores = leave_one_out(scores, p.samples_per_prompt)
    ended = torch.tensor([r[-1] == tok.end_id for r in responses], device=device)
    rewards, given = shape_rewards(logp, ref_logp, action, scores, ended, kl_coef, p.no_end_penalty)
    advantages, returns = gae(rewards, values, action, p.gamma, p.lam)
    advantages = masked_whiten(advantages, action)
    rollout = Rollout(tokens, attn, action, logp, values, advantages, returns)
    per_row = {
        "rm_score": rm_scores,
        "kl": (kl_k1(logp, ref_logp) * action).sum(1),
        "kl_k3": (kl_k3(logp, ref_logp) * action).sum(1),
        "entropy": masked_mean(entropy, action, dim=1),
        "response_length": action.sum(1).float(),
        "end_rate": ended.float(),
        "reward": given,
    }
    return rollout, {k: v.mean().item() for k, v in per_row.items()}


# ---------------------------------------------------------------------- update


def minibatches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + size] for i in range(0, n, size)]


def crop(rollout: Rollout, rows: torch.Tensor) -> Rollout:
    """Rows of a rollout, cut to their longest real row (right padding: the tail is pad)."""
    rows = rows.to(rollout.tokens.device)
    T = int(rollout.attention_mask[rows].sum(1).max())
    return Rollout(
        rollout.tokens[rows, :T],
        rollout.attention_mask[rows, :T],
        *(
            getattr(rollout, k)[rows, : T - 1]
            for k in ("action_mask", "logp", "values", "advantages", "returns")
        ),
    )


def ppo_update(models, optimizers, rollout: Rollout, p: PPOParams, gen) -> dict[str, float]:
    """`ppo_epochs` passes of shuffled minibatches; mean losses and stats over all of them."""
    policy, value = models["policy"], models["value"]
    totals: dict[str, list[float]] = {}
    for _ in range(p.ppo_epochs):
        for rows in minibatches(rollout.tokens.shape[0], p.minibatch_size, gen):
            mb = crop(rollout, rows)
            logits = sequence_logits(policy, mb.tokens, mb.attention_mask)
            logp = logprobs_from_logits(logits, mb.tokens[:, 1:], p.temperature)
            pl, stats = policy_loss(logp, mb.logp, mb.advantages, mb.action_mask, p.clip)
            step(optimizers["policy"], policy, pl, p.grad_clip)
            v = value.values(mb.tokens, mb.attention_mask)[:, :-1]
            vl, vstats = value_loss(v, mb.values, mb.returns, mb.action_mask, p.value_clip)
            step(optimizers["value"], value, vl, p.grad_clip)
            for k, x in {"policy_loss": pl, "value_loss": vl, **stats, **vstats}.items():
                totals.setdefault(k, []).append(float(x.detach()))
    return {k: float(np.mean(v)) for k, v in totals.items()}


def step(optimizer, model, loss: torch.Tensor, grad_clip: float) -> None:
    if not torch.isfinite(loss):
        raise ValueError(f"ppo: loss is {loss.item()}; lower ppo.lr or ppo.value_lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


# ---------------------------------------------------------------------- evaluation


def evaluate(policy, reward_model, tok, examples: list[Example], p: PPOParams, device) -> dict:
    """Greedy responses to held-out prompts: accuracy per family and their mean RM score; and
    the accuracy of responses sampled at the rollout temperature (one per prompt, fixed seed),
    which moves with the policy's entropy where the greedy answer does not."""
    convs = [list(ex.messages) for ex in examples]
    out = respond(policy, tok, convs, p.max_new_tokens, batch_size=p.eval_batch_size)
    prompts = [encode_prompt(tok, c) for c in convs]
    responses = [list(r.ids) or [tok.end_id] for r in out]
    scores = score_responses(reward_model, prompts, responses, tok.pad_id, device)
    accuracy = exact_match_by_family(examples, [r.text for r in out])  # as the sft stage
    sampled = respond(
        policy,
        tok,
        convs,
        p.max_new_tokens,
        temperature=p.temperature,
        seed=0,
        batch_size=p.eval_batch_size,
    )
    return {
        "accuracy": accuracy,
        "hits": [check(ex, r.text) for ex, r in zip(examples, out, strict=True)],
        "sampled_accuracy": exact_match_by_family(examples, [r.text for r in sampled])["all"],
        "rm_score": scores.mean().item(),
        "end_rate": float(np.mean([r.ended for r in out])),
        "transcripts": [(ex.prompt, r.text) for ex, r in zip(examples, out, strict=True)],
    }


# ---------------------------------------------------------------------- stage


def load_models(device) -> dict:
    policy = load_checkpoint(SFT_DIR, device).eval()  # eval: dropout off while training too
    reward = freeze(load_reward_model(REWARD_DIR, device))
    return {
        "policy": policy,
        "ref": freeze(load_checkpoint(SFT_DIR, device)),
        "reward": reward,
        "value": value_model_from_reward(reward),
    }


def make_optimizers(models: dict, p: PPOParams) -> dict:
    def adam(model, lr):
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(p.beta1, p.beta2), eps=1e-5)

    return {"policy": adam(models["policy"], p.lr), "value": adam(models["value"], p.value_lr)}


def draw(pool: list[Example], p: PPOParams, seed: int, it: int) -> list[Example]:
    """The prompts of iteration `it`: `rollout_batch / samples_per_prompt` of the pool, without
    replacement, from a generator seeded by (seed, it); each prompt's responses go side by
    side in the rollout."""
    rng = np.random.default_rng([seed, it])
    n = min(p.rollout_batch // p.samples_per_prompt, len(pool))
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def seen_prompts(pool: list[Example], params) -> list[Example]:
    """Up to `eval_prompts_per_family` of the prompts the rollouts drew, per family."""
    p = params.ppo
    seen = {
        ex.prompt: ex for it in range(1, p.iterations + 1) for ex in draw(pool, p, params.seed, it)
    }
    return per_family(list(seen.values()), p.eval_prompts_per_family)


def paired_change(before: list[bool], after: list[bool]) -> dict:
    """Held-out prompts PPO fixed (wrong -> right) and broke (right -> wrong), and the exact
    McNemar p-value: the two-sided binomial test of fixed against broken at 1/2, how often a
    change at least this lopsided comes from a policy no better than SFT."""
    fixed = sum(a and not b for b, a in zip(before, after, strict=True))
    broken = sum(b and not a for b, a in zip(before, after, strict=True))
    p_value = binomtest(fixed, fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "p_value": float(p_value)}


def greedy_accuracy(model, tok, examples: list[Example], p: PPOParams) -> dict[str, float]:
    convs = [list(ex.messages) for ex in examples]
    out = respond(model, tok, convs, p.max_new_tokens, batch_size=p.eval_batch_size)
    return exact_match_by_family(examples, [r.text for r in out])


def iteration(it, models, optimizers, kl_ctl, tok, pool, params, gen, device) -> dict:
    """One rollout and its update; returns the row for train.csv."""
    p = params.ppo
    batch = [ex for ex in draw(pool, p, params.seed, it) for _ in range(p.samples_per_prompt)]
    prompts = [encode_prompt(tok, list(ex.messages)) for ex in batch]
    responses = sample(models["policy"], tok, prompts, p, seed=params.seed * 100003 + it)
    texts = [extract_response(tok, r) for r in responses]  # (text, ended)
    hits = [check(ex, text) for ex, (text, _) in zip(batch, texts, strict=True)]
    scores = checker_scores(hits, device) if p.reward == "checker" else None
    rollout, stats = score_rollout(models, tok, prompts, responses, p, kl_ctl.value, device, scores)
    stats["accuracy"] = float(np.mean(hits))
    stats["kl_coef"] = kl_ctl.value
    stats |= ppo_update(models, optimizers, rollout, p, gen)
    kl_ctl.update(stats["kl"], len(batch))
    return stats


def check_lengths(pool: list[Example], tok, block_size: int, p: PPOParams) -> None:
    longest = max(len(encode_prompt(tok, list(ex.messages))) for ex in pool)
    if longest + p.max_new_tokens > block_size:
        raise ValueError(
            f"ppo.max_new_tokens: a prompt of {longest} tokens plus {p.max_new_tokens} new ones "
            f"exceeds block_size {block_size}; lower max_new_tokens"
        )


def main() -> None:
    params = load_params()
    if params.ppo.seed is not None:  # PPO's own seed: re-runs PPO alone, on the same SFT and RM
        params = params.model_copy(update={"seed": params.ppo.seed})
    p, device = params.ppo, resolve_device(params.device)
    seed_everything(params.seed)
    tok = Tokenizer.load(SFT_DIR / TOKENIZER_FILE)
    pool = [ex for ex in read_prompts() if p.families is None or ex.family in p.families]
    pool = per_family(pool, p.prompts_per_family)
    if not pool:
        raise ValueError(f"ppo.families: no prefs prompts of {p.families} (see instruct.families)")
    test = per_family(read_examples("test"), p.eval_prompts_per_family)
    models = load_models(device)
    check_lengths(pool + test, tok, models["policy"].config.block_size, p)
    run_params = {"ppo": p.model_dump(), "seed": params.seed}
    with tracking.stage_run("ppo", run_params):
        before = evaluate(models["policy"], models["reward"], tok, test, p, device)
        log_eval(0, before)
        history, evals, seconds = train(models, tok, pool, test, params, device, before)
        after = evals[-1][1] if evals[-1][0] == p.iterations else None
        after = after or evaluate(models["policy"], models["reward"], tok, test, p, device)
        seen = seen_prompts(pool, params)  # train-side: a gain here alone is memorisation
        before["seen"] = greedy_accuracy(models["ref"], tok, seen, p)["all"]
        after["seen"] = greedy_accuracy(models["policy"], tok, seen, p)["all"]
        finish(models["policy"], tok, params, before, after, history, evals, seconds)


def train(models, tok, pool, test, params, device, before) -> tuple[list, list, float]:
    p = params.ppo
    kl_ctl = make_kl_controller(p.kl_control, p.kl_coef, p.kl_target, p.kl_horizon)
    optimizers = make_optimizers(models, p)
    gen = torch.Generator().manual_seed(params.seed)
    history, evals = [], [(0, before)]
    t0 = time.perf_counter()
    for it in range(1, p.iterations + 1):
        stats = iteration(it, models, optimizers, kl_ctl, tok, pool, params, gen, device)
        history.append((it, stats))
        tracking.log_metrics({f"train/{k}": stats[k] for k in TRAIN_COLUMNS}, step=it)
        if it % p.log_interval == 0 or it == p.iterations:
            log_progress(it, p.iterations, stats, time.perf_counter() - t0)
        if it % p.eval_interval == 0 or it == p.iterations:
            result = evaluate(models["policy"], models["reward"], tok, test, p, device)
            evals.append((it, result))
            log_eval(it, result)
    return history, evals, time.perf_counter() - t0


def log_progress(it: int, total: int, s: dict, elapsed: float) -> None:
    eta = elapsed / it * (total - it)
    fields = [
        f"ppo | iter {it}/{total} ({100 * it / total:.0f}%)",
        f"score {s['rm_score']:+.3f}",
        f"acc {s['accuracy']:.3f}",
        f"kl {s['kl']:.3f}",
        f"ent {s['entropy']:.3f}",
        f"clip {s['clip_frac']:.3f}",
        f"vloss {s['value_loss']:.3f}",
        f"len {s['response_length']:.1f}",
        f"end {s['end_rate']:.2f}",
        f"{1000 * elapsed / it:.0f} ms/iter",
        f"ETA {int(eta // 60)}m{int(eta % 60):02d}s",
    ]
    log.info(" | ".join(fields))


def log_eval(it: int, result: dict) -> None:
    tracking.log_metrics(
        {
            "test/accuracy": result["accuracy"]["all"],
            "test/sampled_accuracy": result["sampled_accuracy"],
            "test/rm_score": result["rm_score"],
            "test/end_rate": result["end_rate"],
        },
        step=it,
    )
    log.info(
        "ppo | iter %d | held-out accuracy %.3f (sampled %.3f) | RM score %+.3f | end rate %.2f",
        it,
        result["accuracy"]["all"],
        result["sampled_accuracy"],
        result["rm_score"],
        result["end_rate"],
    )


def finish(policy, tok, params, before, after, history, evals, seconds: float) -> None:
    p = params.ppo
    last = history[-max(1, p.iterations // 10) :]  # the last tenth of the run
    mean_last = {k: float(np.mean([s[k] for _, s in last])) for k in TRAIN_COLUMNS}
    metrics = {
        "sft_test_accuracy": before["accuracy"]["all"],
        "ppo_test_accuracy": after["accuracy"]["all"],
        "test_accuracy_gain": after["accuracy"]["all"] - before["accuracy"]["all"],
        **{f"test_{k}": v for k, v in paired_change(before["hits"], after["hits"]).items()},
        "sft_test_sampled_accuracy": before["sampled_accuracy"],
        "ppo_test_sampled_accuracy": after["sampled_accuracy"],
        "sft_seen_accuracy": before["seen"],
        "ppo_seen_accuracy": after["seen"],
        "sft_test_rm_score": before["rm_score"],
        "ppo_test_rm_score": after["rm_score"],
        "sft_test_end_rate": before["end_rate"],
        "ppo_test_end_rate": after["end_rate"],
        "final_kl": mean_last["kl"],
        "final_kl_k3": mean_last["kl_k3"],
        "final_kl_coef": history[-1][1]["kl_coef"],
        "final_rollout_accuracy": mean_last["accuracy"],
        "final_rollout_rm_score": mean_last["rm_score"],
        "first_rollout_accuracy": history[0][1]["accuracy"],
        "first_rollout_rm_score": history[0][1]["rm_score"],
        "sft_test_accuracy_by_family": before["accuracy"],
        "ppo_test_accuracy_by_family": after["accuracy"],
        "test_prompts": len(before["transcripts"]),
        "iterations": p.iterations,
        "train_seconds": seconds,
    }
    metrics = _rounded(metrics)
    save_checkpoint(
        OUT_DIR,
        policy,
        SFT_DIR / TOKENIZER_FILE,
        {"stage": "ppo", "iterations": p.iterations, "from": str(SFT_DIR)},
    )
    write_text(OUT_DIR / "samples.txt", transcripts(before, after))
    write_json(METRICS / "ppo.json", metrics)
    write_plots(history, evals)
    tracking.log_metrics({f"final/{k}": v for k, v in metrics.items() if not isinstance(v, dict)})
    for path in (OUT_DIR / "samples.txt", METRICS / "ppo.json", PLOTS / "ppo" / "train.csv"):
        tracking.log_artifact(path)
    tags = {"iterations": p.iterations, "test_accuracy": metrics["ppo_test_accuracy"]}
    registry.register_checkpoint(OUT_DIR, registry.ALIGNED_MODEL, tags=tags)
    log.info(
        "ppo: held-out accuracy %.3f -> %.3f (%+.3f: %d fixed, %d broken, McNemar p %.2f), "
        "on seen prompts %.3f -> %.3f, RM score %+.3f -> %+.3f, KL %.3f nats",
        metrics["sft_test_accuracy"],
        metrics["ppo_test_accuracy"],
        metrics["test_accuracy_gain"],
        metrics["test_fixed"],
        metrics["test_broken"],
        metrics["test_p_value"],
        metrics["sft_seen_accuracy"],
        metrics["ppo_seen_accuracy"],
        metrics["sft_test_rm_score"],
        metrics["ppo_test_rm_score"],
        metrics["final_kl"],
    )


def _rounded(d: dict) -> dict:
    return {
        k: _rounded(v) if isinstance(v, dict) else round(v, 5) if isinstance(v, float) else v
        for k, v in d.items()
    }


def transcripts(before: dict, after: dict, n: int = 40) -> str:
    """Up to n held-out prompts, spread over the families, with both policies' answers."""
    every = max(1, len(before["transcripts"]) // n)
    rows = zip(before["transcripts"][::every], after["transcripts"][::every], strict=True)
    blocks = [f"--- {q}\nsft: {a!r}\nppo: {b!r}" for (q, a), (_, b) in rows]
    return "\n".join(blocks) + "\n"


def write_plots(history: list, evals: list) -> None:
    header = "step," + ",".join(TRAIN_COLUMNS)
    rows = [f"{it}," + ",".join(f"{s[k]:.6f}" for k in TRAIN_COLUMNS) for it, s in history]
    write_text(PLOTS / "ppo" / "train.csv", "\n".join([header, *rows]) + "\n")
    rows = [
        f"{it},{r['accuracy']['all']:.6f},{r['sampled_accuracy']:.6f},{r['rm_score']:.6f},"
        f"{r['end_rate']:.6f}"
        for it, r in evals
    ]
    header = "step,test_accuracy,test_sampled_accuracy,test_rm_score,test_end_rate"
    write_text(PLOTS / "ppo" / "eval.csv", "\n".join([header, *rows]) + "\n")


if __name__ == "__main__":
    run_stage(main)
