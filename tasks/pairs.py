"""Preference pairs for the reward stage: sampled from the SFT policy and labelled by the task
checkers, built without sampling (swapped, near misses), or read from a JSONL file.

Kinds of pair (`Pair.source`):
- `sampled`: two of the policy's `samples_per_prompt` answers to one prefs prompt, one the
  checker accepts and one it rejects. Where the policy never gets a prompt right, the reference
  answer is the chosen side (`reference`), so hard families, which the policy mostly fails,
  still teach the model what a right answer looks like; where it never gets one wrong, the
  prompt gives no pair.
- `swapped`: the reference against another prompt's reference of the same family (train only).
- `near`: the reference against a wrong answer shaped like it (`model.instruct.near_misses`)
  on `near_prompts_per_family` prompts per family, too many to memorise (train only).
- `file`: `pairs_file`, one {"prompt", "chosen", "rejected"} object per line (the prompt is one
  user turn; responses are assistant text, closed with <|end|> here); a hash of the prompt
  holds out `eval_fraction` of them.
Held-out pairs are two policy samples of a test prompt, as the issue defines them; test pairs
with the reference as chosen are kept apart by their source.
Leaves out: the reward model and its training (tasks/reward.py).
Tests: `pytest tests/test_reward.py`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.chat import encode_prompt, encode_turn, extract_response, respond
from model.instruct import Example, check, near_misses, read_jsonl, reference_answer
from tasks.common import log
from tasks.instruct import read_examples, read_prompts
from tasks.params import RewardParams


@dataclass(frozen=True)
class Pair:
    """One preference: token ids of the prompt and of both responses (<|end|> included)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    family: str
    source: str  # sampled | reference (chosen is the reference answer) | swapped | file


# ---------------------------------------------------------------------- pairs


def sample_by_prompt(policy, tok, examples: list[Example], p: RewardParams, seed: int) -> list:
    """`samples_per_prompt` sampled responses per example, grouped: list (per example) of
    lists of (ids, correct)."""
    convs = [list(ex.messages) for ex in examples] * p.samples_per_prompt
    out = respond(
        policy,
        tok,
        convs,
        p.max_new_tokens,
        temperature=p.sample_temperature,
        seed=seed,
        batch_size=p.generation_batch_size,
    )
    groups: list[list] = [[] for _ in examples]
    for k, r in enumerate(out):
        ex = examples[k % len(examples)]
        groups[k % len(examples)].append((list(r.ids), r.ended and check(ex, r.text)))
    return groups


def pairs_from_samples(tok, examples: list[Example], groups: list, per_prompt: int) -> list[Pair]:
    """(correct, incorrect) pairs per prompt; the reference answer stands in when no sample is
    correct; prompts with no incorrect sample give none."""
    pairs = []
    for ex, group in zip(examples, groups, strict=True):
        prompt = encode_prompt(tok, list(ex.messages))
        good = _distinct([ids for ids, ok in group if ok])
        bad = _distinct([ids for ids, ok in group if not ok])
        source = "sampled"
        if not good:
            good, source = [encode_turn(tok, reference_answer(ex))], "reference"
        for i, rejected in enumerate(bad[:per_prompt]):
            pairs.append(Pair(prompt, good[i % len(good)], rejected, ex.family, source))
    return pairs


def swapped_pairs(tok, examples: list[Example], per_prompt: int, seed: int) -> list[Pair]:
    """(reference, another prompt's reference) pairs within a family: the rejected side is a
    well-formed answer to a different task that the checker rejects here. They teach the model
    to compare the answer with the prompt, which sampled pairs alone (a few hundred per family)
    do not; they are training pairs only, never held out."""
    rng = random.Random(seed)
    by_family: dict[str, list[Example]] = {}
    for ex in examples:
        by_family.setdefault(ex.family, []).append(ex)
    pairs = []
    for ex in examples:
        prompt, chosen = encode_prompt(tok, list(ex.messages)), reference_answer(ex)
        others = [o for o in by_family[ex.family] if not check(ex, reference_answer(o))]
        for other in rng.sample(others, min(per_prompt, len(others))):
            rejected = encode_turn(tok, reference_answer(other))
            pairs.append(Pair(prompt, encode_turn(tok, chosen), rejected, ex.family, "swapped"))
    return pairs


def near_miss_pairs(tok, examples: list[Example], per_prompt: int, seed: int) -> list[Pair]:
    """(reference, near miss) pairs: the rejected side is a wrong answer shaped like the right
    one (`model.instruct.near_misses`: the second word for the first, 725 for 726). Made
    without sampling, they can cover thousands of prompts per family, too many to memorise,
    so the model has to learn to check the answer against the prompt; train only."""
    rng = random.Random(seed)
    pairs = []
    for ex in examples:
        wrong = near_misses(ex, rng, per_prompt)
        if not wrong:
            continue
        prompt, chosen = (
            encode_prompt(tok, list(ex.messages)),
            encode_turn(tok, reference_answer(ex)),
        )
        pairs.extend(Pair(prompt, chosen, encode_turn(tok, w), ex.family, "near") for w in wrong)
    return pairs


def _distinct(rows: list[list[int]]) -> list[list[int]]:
    return [list(r) for r in dict.fromkeys(tuple(r) for r in rows)]


def per_family(examples: list[Example], n: int) -> list[Example]:
    """The first n examples of each family, in order."""
    seen: dict[str, int] = {}
    out = []
    for ex in examples:
        if seen.get(ex.family, 0) < n:
            seen[ex.family] = seen.get(ex.family, 0) + 1
            out.append(ex)
    return out


def load_pairs_jsonl(path: str | Path) -> list[dict]:
    """{"prompt", "chosen", "rejected"} records of a JSONL file; ValueError naming file:line."""
    records = [
        _pair_record(rec, where)
        for where, rec in read_jsonl(path, "preference pairs file not found")
    ]
    if not records:
        raise ValueError(f"{path}: no preference pairs")
    return records


def _pair_record(rec, where: str) -> dict:
    keys = ("prompt", "chosen", "rejected")
    if not isinstance(rec, dict) or set(rec) != set(keys):
        got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise ValueError(f"{where}: expected exactly the keys {list(keys)}, got {got}")
    bad = [k for k in keys if not isinstance(rec[k], str)]
    if bad:
        raise ValueError(f"{where}: {bad} must be strings")
    if not rec["prompt"].strip():
        raise ValueError(f"{where}: empty 'prompt'")
    if rec["chosen"] == rec["rejected"]:
        raise ValueError(f"{where}: 'chosen' and 'rejected' are the same text")
    return rec


def pairs_from_file(tok, records: list[dict], eval_fraction: float) -> tuple[list, list]:
    """(train, eval) Pairs; a hash of the prompt text puts each record on one side."""
    train, held = [], []
    for rec in records:
        prompt = encode_prompt(tok, [{"role": "user", "content": rec["prompt"]}])
        pair = Pair(
            prompt,
            encode_turn(tok, rec["chosen"]),
            encode_turn(tok, rec["rejected"]),
            "file",
            "file",
        )
        digest = hashlib.sha256(rec["prompt"].encode()).digest()
        (held if int.from_bytes(digest[:8], "big") < eval_fraction * 2**64 else train).append(pair)
    if not train or not held:
        raise ValueError(
            f"reward.pairs_file: {len(records)} pairs give {len(train)} train and {len(held)} "
            "held-out pairs; both need at least one (add pairs or change eval_fraction)"
        )
    return train, held


def fits(pairs: list[Pair], block_size: int) -> list[Pair]:
    """Pairs whose prompt + longer response fit the context (the rest are logged and dropped)."""
    kept = [q for q in pairs if len(q.prompt) + max(len(q.chosen), len(q.rejected)) <= block_size]
    if len(kept) < len(pairs):
        log.warning("reward: dropped %d pairs longer than block_size", len(pairs) - len(kept))
    return kept


def build_pairs(policy, tok, params, device) -> dict:
    """Train and held-out pairs, plus the policy samples that fix the normalisation."""
    p, seed = params.reward, params.seed
    if p.pairs == "jsonl":
        records = load_pairs_jsonl(p.pairs_file)
        train, held = pairs_from_file(tok, records, p.eval_fraction)
        examples = [
            Example("file", ({"role": "user", "content": r["prompt"]},), r["chosen"])
            for r in records
        ]
        train_groups = sample_by_prompt(policy, tok, examples, p, seed)
        sample_acc = float("nan")
    else:
        prompts = read_prompts()
        examples = per_family(prompts, p.prompts_per_family)
        test = per_family(read_examples("test"), p.eval_prompts_per_family)
        train_groups = sample_by_prompt(policy, tok, examples, p, seed)
        train = pairs_from_samples(tok, examples, train_groups, p.pairs_per_prompt)
        train += swapped_pairs(tok, examples, p.swapped_per_prompt, seed)
        near = per_family(prompts, p.near_prompts_per_family)
        train += near_miss_pairs(tok, near, p.near_per_prompt, seed)
        held_groups = sample_by_prompt(policy, tok, test, p, seed + 1)
        held = pairs_from_samples(tok, test, held_groups, p.pairs_per_prompt)
        sample_acc = float(np.mean([ok for g in train_groups for _, ok in g]))
    samples = [
        (encode_prompt(tok, list(ex.messages)), ids)
        for ex, g in zip(examples, train_groups, strict=True)
        for ids, _ in g
        if ids
    ]
    T = policy.config.block_size
    train, held = fits(train, T), fits(held, T)
    samples = [s for s in samples if len(s[0]) + len(s[1]) <= T]
    if not train or not held:
        raise ValueError(
            f"reward: {len(train)} train and {len(held)} held-out pairs; the policy gets every "
            "sampled prompt right or wrong alike (raise samples_per_prompt or prompts_per_family)"
        )
    return {
        "train": train,
        "held": held,
        "samples": samples,
        "sample_accuracy": sample_acc,
    }


def pairs_jsonl(tok, pairs: list[Pair]) -> str:
    """Pairs in the loader's format (decoded; <|end|> dropped, prompt = last user text)."""
    lines = []
    for q in pairs:
        prompt = tok.decode(q.prompt[:-1])  # drop <|assistant|>
        prompt = prompt.split("<|user|>")[-1].removesuffix("<|end|>").removeprefix(" ")
        chosen, rejected = (extract_response(tok, ids)[0] for ids in (q.chosen, q.rejected))
        lines.append(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
    return "\n".join(lines) + "\n"
