"""reward stage: a reward model on the SFT backbone, trained on preference pairs.

The pairs (`reward.pairs`: `sampled` from the SFT policy and labelled by the task checkers,
plus swapped and near-miss pairs; or a `jsonl` file) come from tasks/pairs.py.
The model is `model.reward.ScalarHeadModel` from the SFT weights, trained with the
Bradley-Terry loss (plus `center_coef` x (r_chosen + r_rejected)^2, which keeps every prompt's
scores about one offset) through the shared loop (tasks/training.py). Its scores are then
normalised to mean 0, std 1 on fresh policy samples of the prefs prompts (offset and scale are
buffers in the weights and are repeated in config.json). The headline metric is the held-out
pairwise accuracy on pairs of two policy samples; as a yardstick, the same pairs are also
ranked by the SFT policy's own likelihood of each response (`policy_loglik_accuracy`): what
the backbone already knows about a pair.

    python -m tasks.reward
Writes out/reward/ (model.safetensors, config.json, tokenizer.json, pairs.jsonl: the train
pairs in the loader's JSONL format), metrics/reward.json, plots/reward/{train,val}.csv.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.ppo import logprobs_from_logits, pack, sequence_logits
from model.reward import ScalarHeadModel, bradley_terry_loss, pairwise_accuracy
from model.tokenizer import Tokenizer
from tasks import tracking
from tasks.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    load_checkpoint,
    save_checkpoint,
)
from tasks.common import log, resolve_device, run_stage, seed_everything
from tasks.hardware import matmul_peak_flops
from tasks.io import METRICS, OUT, PLOTS, flatten, write_json, write_text
from tasks.pairs import Pair, build_pairs, pairs_jsonl
from tasks.params import load_params
from tasks.training import Loop, fingerprint, fit, make_optimizer, peek_resume, resume

OUT_DIR, RESUME_DIR, SFT_DIR = OUT / "reward", OUT / "reward-resume", OUT / "sft"


# ---------------------------------------------------------------------- model


class PairwiseObjective(nn.Module):
    """Adapter for the shared loop: rows are the batch's chosen responses then its rejected
    ones; returns (raw scores, Bradley-Terry loss)."""

    def __init__(self, rm: ScalarHeadModel, center_coef: float = 0.0):
        super().__init__()
        self.rm, self.center_coef = rm, center_coef

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor):
        scores = self.rm.raw_score(tokens, attention_mask)
        n = scores.shape[0] // 2
        return scores, bradley_terry_loss(scores[:n], scores[n:], self.center_coef)


def pack_pairs(pairs: list[Pair], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows (2N, T): N chosen then N rejected; and their attention mask."""
    prompts = [q.prompt for q in pairs] * 2
    responses = [q.chosen for q in pairs] + [q.rejected for q in pairs]
    tokens, attention_mask, _ = pack(prompts, responses, pad_id, device)
    return tokens, attention_mask


@torch.no_grad()
def pair_scores(rm, pairs: list[Pair], pad_id: int, device, batch_size: int = 64):
    """Raw (chosen, rejected) scores, each (N,)."""
    rm.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        scores = rm.raw_score(*pack_pairs(chunk, pad_id, device))
        chosen.append(scores[: len(chunk)])
        rejected.append(scores[len(chunk) :])
    return torch.cat(chosen), torch.cat(rejected)


@torch.no_grad()
def score_responses(
    rm, prompts, responses, pad_id: int, device, batch_size: int = 64, raw: bool = False
) -> torch.Tensor:
    """Scores (N,) of prompt + response rows: normalised, or raw (before offset and scale)."""
    rm.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens, attn, _ = pack(
            prompts[i : i + batch_size], responses[i : i + batch_size], pad_id, device
        )
        out.append(rm.raw_score(tokens, attn) if raw else rm.score(tokens, attn))
    return torch.cat(out)


@torch.no_grad()
def response_logprob(policy, pairs: list[Pair], side: str, pad_id: int, device, batch_size=64):
    """Summed log-probability (N,) of each pair's `side` ("chosen" / "rejected") response."""
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        responses = [getattr(q, side) for q in chunk]
        tokens, attn, act = pack([q.prompt for q in chunk], responses, pad_id, device)
        logp = logprobs_from_logits(sequence_logits(policy, tokens, attn), tokens[:, 1:])
        out.append((logp * act).sum(dim=1))
    return torch.cat(out)


def loglik_baseline(policy, held: list[Pair], pad_id: int, device) -> dict:
    """How often the SFT policy itself gives the chosen response the higher likelihood: the
    yardstick for the reward model (it shows what the backbone already knows about a pair),
    on the same pairs as `pairwise_accuracy` (those whose chosen side is not the reference)."""
    held = [q for q in held if q.source != "reference"]
    if not held:
        return {}
    policy.eval()
    chosen = response_logprob(policy, held, "chosen", pad_id, device)
    rejected = response_logprob(policy, held, "rejected", pad_id, device)
    return {"policy_loglik_accuracy": pairwise_accuracy(chosen, rejected)}


def load_reward_model(path: str | Path = OUT_DIR, device="cpu") -> ScalarHeadModel:
    """The reward model of a reward-stage folder (weights with offset/scale, config.json)."""
    model = load_checkpoint(path, device, ScalarHeadModel, "missing; run the reward stage")
    return model.eval()


# ---------------------------------------------------------------------- stage


def make_loop(objective, data, params, device, run_id: str, fp: str) -> Loop:
    p, pad = params.reward, data["pad_id"]
    train, held = data["train"], data["held"]

    def batch(step: int, micro: int):
        rng = np.random.default_rng([params.seed, step, micro])
        idx = rng.choice(len(train), size=min(p.batch_size, len(train)), replace=False)
        return pack_pairs([train[i] for i in idx], pad, device)

    def evaluate() -> dict[str, float]:
        chosen, rejected = pair_scores(objective.rm, held, pad, device)
        return {
            "val/loss": bradley_terry_loss(chosen, rejected).item(),
            "val/accuracy": pairwise_accuracy(chosen, rejected),
        }

    mean_len = np.mean([len(q.prompt) + len(q.chosen) for q in train])
    T = int(mean_len)
    return Loop(
        stage="reward",
        batch=batch,
        evaluate=evaluate,
        resume_dir=RESUME_DIR,
        fingerprint=fp,
        run_id=run_id,
        tokens_per_step=2 * min(p.batch_size, len(train)) * T * p.grad_accum,
        flops_per_token=objective.rm.backbone.flops_per_token(T),
        peak_flops=matmul_peak_flops(device.type),
    )


def main() -> None:
    params = load_params()
    p, device = params.reward, resolve_device(params.device)
    seed_everything(params.seed)
    tok = Tokenizer.load(SFT_DIR / TOKENIZER_FILE)
    policy = load_checkpoint(SFT_DIR, device).eval()
    t0 = time.perf_counter()
    data = build_pairs(policy, tok, params, device) | {"pad_id": tok.pad_id}
    data["baseline"] = loglik_baseline(policy, data["held"], tok.pad_id, device)
    sample_seconds = time.perf_counter() - t0
    log.info(
        "reward: %d train / %d held-out pairs (%d with the reference as chosen) in %.1fs",
        len(data["train"]),
        len(data["held"]),
        sum(q.source == "reference" for q in data["train"]),
        sample_seconds,
    )
    sft_hash = hashlib.sha256((SFT_DIR / MODEL_FILE).read_bytes()).hexdigest()
    fp = fingerprint(p.model_dump(), params.seed, sft_hash, len(data["train"]))
    meta = peek_resume(RESUME_DIR, fp)
    run_params = {"reward": p.model_dump(), "seed": params.seed}
    with tracking.stage_run("reward", run_params, meta and meta["run_id"]) as run_id:
        rm = ScalarHeadModel.from_gpt(policy)
        objective = PairwiseObjective(rm, p.center_coef)
        optimizer = make_optimizer(objective, p)
        loop = make_loop(objective, data, params, device, run_id, fp)
        start = resume(objective, optimizer, loop) if meta else 0
        t1 = time.perf_counter()
        fit(objective, optimizer, loop, p, device, start)
        finish(rm, tok, data, params, loop, device, time.perf_counter() - t1, sample_seconds)
    shutil.rmtree(RESUME_DIR, ignore_errors=True)


def finish(rm, tok, data, params, loop, device, train_seconds: float, sample_seconds: float):
    pad = tok.pad_id
    rm.eval()
    prompts, responses = zip(*data["samples"], strict=True)
    rm.set_normalisation(score_responses(rm, list(prompts), list(responses), pad, device, raw=True))
    metrics = held_out_metrics(rm, data, pad, device) | data.get("baseline", {})
    metrics |= {
        "train_pairs": len(data["train"]),
        "reference_chosen_pairs": sum(q.source == "reference" for q in data["train"]),
        "swapped_pairs": sum(q.source == "swapped" for q in data["train"]),
        "near_miss_pairs": sum(q.source == "near" for q in data["train"]),
        "policy_samples": len(data["samples"]),
        "policy_sample_accuracy": data["sample_accuracy"],
        "score_offset": rm.offset.item(),
        "score_scale": rm.scale.item(),
        "steps": params.reward.max_steps,
        "sample_seconds": sample_seconds,
        "train_seconds": train_seconds,
    }
    metrics = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
    metrics = {k: v for k, v in metrics.items() if v == v}  # no NaN (jsonl: no checker accuracy)
    save_checkpoint(
        OUT_DIR,
        rm,
        SFT_DIR / TOKENIZER_FILE,
        {
            "stage": "reward",
            "head": "scalar, read at the last real token",
            "offset": rm.offset.item(),
            "scale": rm.scale.item(),
        },
    )
    write_text(OUT_DIR / "pairs.jsonl", pairs_jsonl(tok, data["train"]))
    write_json(METRICS / "reward.json", metrics)
    write_plots(loop.history)
    tracking.log_metrics({f"final/{k}": v for k, v in flatten(metrics).items()})
    for path in (OUT_DIR / CONFIG_FILE, METRICS / "reward.json", OUT_DIR / "pairs.jsonl"):
        tracking.log_artifact(path)
    by_family = metrics["pairwise_accuracy_by_family"]
    log.info("reward: held-out pairwise accuracy by family %s", by_family)
    log.info(
        "reward: held-out pairwise accuracy %.3f on %d pairs (the SFT policy's own likelihood "
        "ranks %.3f of them right); %.3f on %d pairs with the reference as chosen",
        metrics.get("pairwise_accuracy", float("nan")),
        metrics.get("eval_pairs", 0),
        metrics.get("policy_loglik_accuracy", float("nan")),
        metrics.get("pairwise_accuracy_reference", float("nan")),
        metrics.get("eval_pairs_reference", 0),
    )


def held_out_metrics(rm, data, pad: int, device) -> dict:
    """Held-out accuracy on the issue's pairs (two policy samples, or a file's pairs), on the
    pairs whose chosen side is the reference, and on all of them; per family on the first."""
    held = data["held"]
    chosen, rejected = pair_scores(rm, held, pad, device)
    out = {
        "pairwise_accuracy_all": pairwise_accuracy(chosen, rejected),
        "eval_pairs_all": len(held),
        "eval_loss": bradley_terry_loss(chosen, rejected).item(),
    }
    sources = torch.tensor([q.source == "reference" for q in held], device=chosen.device)
    for key, keep in (("", ~sources), ("_reference", sources)):
        if keep.any():
            out[f"pairwise_accuracy{key}"] = pairwise_accuracy(chosen[keep], rejected[keep])
            out[f"eval_pairs{key}"] = int(keep.sum())
    if not (~sources).any():
        log.warning(
            "reward: no held-out pair of two policy samples (the policy answers no test "
            "prompt right in samples_per_prompt tries): pairwise_accuracy is not measured"
        )
    by_family = {}
    for family in dict.fromkeys(q.family for q in held if q.source != "reference"):
        keep = torch.tensor([q.family == family for q in held], device=chosen.device) & ~sources
        by_family[family] = round(pairwise_accuracy(chosen[keep], rejected[keep]), 4)
    out["pairwise_accuracy_by_family"] = by_family
    chosen_n, rejected_n = (chosen - rm.offset) / rm.scale, (rejected - rm.offset) / rm.scale
    out["score_chosen_mean"] = chosen_n.mean().item()
    out["score_rejected_mean"] = rejected_n.mean().item()
    return out


def write_plots(history: dict) -> None:
    for name in ("train", "val"):
        rows = "\n".join(f"{s},{v:.6f}" for s, v in history[name])
        write_text(PLOTS / "reward" / f"{name}.csv", f"step,loss\n{rows}\n")


if __name__ == "__main__":
    run_stage(main)
