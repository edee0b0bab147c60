"""instruct stage: the instruction data for SFT, reward and PPO.

Generated task families (model/instruct.py) drawn with the run's seed, split by instance, plus
any user files (`instruct.files`: Alpaca JSON or chat-messages JSONL), which are split the same
way (a hash of the prompt text decides the side). The split is the same for every seed.
Three files:
- train: SFT's examples (`n_train_per_family` generated, plus the user's train-side ones);
- prefs: the next `n_prefs_per_family` generated train-side prompts (fewer where a family runs
  out), never in train: the prompts the reward model and PPO learn from. A policy has seen its
  SFT prompts' answers; pairs and rollouts on those would measure recall, not the skill the
  test split measures (the RLHF recipe keeps SFT, reward and PPO prompts apart);
- test: `n_test_per_family` held-out prompts (fewer where a family's test side runs out:
  copy has 64, upper 91), and the user's test-side ones, for every stage.

    python -m tasks.instruct
Writes out/instruct/{train,prefs,test}.jsonl (one `Example.to_dict()` per line) and
metrics/instruct.json (examples per family and split).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from model.instruct import (
    Example,
    load_alpaca,
    load_chat_jsonl,
    make_examples,
    read_jsonl,
    split_of,
)
from tasks import tracking
from tasks.common import log, run_stage
from tasks.io import METRICS, OUT, atomic_dir, write_json
from tasks.params import InstructParams, load_params

OUT_DIR = OUT / "instruct"
SPLITS = ("train", "prefs", "test")


def load_user_files(files: list[str]) -> list[Example]:
    """Examples of every user file: .json is Alpaca records, .jsonl is chat messages."""
    out: list[Example] = []
    for name in files:
        path = Path(name)
        if path.suffix == ".json":
            out.extend(load_alpaca(path))
        elif path.suffix == ".jsonl":
            out.extend(load_chat_jsonl(path))
        else:
            raise ValueError(
                f"instruct.files: {name}: expected .json (Alpaca) or .jsonl (chat messages)"
            )
    return out


def build_splits(p: InstructParams, seed: int) -> dict[str, list[Example]]:
    """Generated examples of each split plus the user examples that fall on that side."""
    user = load_user_files(p.files)
    splits = {}
    for split in ("train", "test"):
        n = p.n_train_per_family if split == "train" else p.n_test_per_family
        # test: every family gives what its split has, up to n (copy and upper have fewer)
        generated = make_examples(seed, n, split, p.families, split == "test") if n else []
        mine = [ex for ex in user if split_of(ex.family, _key(ex)) == split]
        splits[split] = generated + mine
    splits["prefs"] = prefs_examples(p, seed)
    if not splits["train"]:
        raise ValueError("instruct: no training examples (n_train_per_family is 0, no files)")
    return splits


def prefs_examples(p: InstructParams, seed: int) -> list[Example]:
    """The generated train-side prompts after SFT's: the first n_train of each family's draw
    are SFT's (make_examples keeps a prefix when asked for more), the rest are these."""
    if not p.n_prefs_per_family:
        return []
    n_train = p.n_train_per_family
    drawn = make_examples(seed, n_train + p.n_prefs_per_family, "train", p.families, True)
    seen: Counter = Counter()
    out = []
    for ex in drawn:
        seen[ex.family] += 1
        if seen[ex.family] > n_train:
            out.append(ex)
    return out


def read_prompts(split: str = "prefs", root: str | Path = OUT_DIR) -> list[Example]:
    """The examples the reward model and PPO learn from: prefs, or train when prefs is empty
    (no generated families), with a warning (a policy has seen those answers in SFT)."""
    examples = read_examples(split, root)
    if examples:
        return examples
    log.warning("instruct: no %s prompts (n_prefs_per_family 0 or no families); using train", split)
    return read_examples("train", root)


def _key(ex: Example) -> str:
    """The text that decides a user example's split: its whole context."""
    return json.dumps(list(ex.messages), sort_keys=True)


def write_examples(path: Path, examples: list[Example]) -> None:
    lines = [json.dumps(ex.to_dict(), ensure_ascii=False) for ex in examples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_examples(split: str, root: str | Path = OUT_DIR) -> list[Example]:
    """The examples of a split written by this stage (train, prefs or test)."""
    path = Path(root) / f"{split}.jsonl"
    records = read_jsonl(path, "missing; run the instruct stage first")
    return [Example.from_dict(record, where) for where, record in records]


def counts(splits: dict[str, list[Example]]) -> dict:
    metrics = {}
    for split, examples in splits.items():
        by_family = Counter(ex.family for ex in examples)
        metrics[split] = {"total": len(examples), **dict(sorted(by_family.items()))}
    return metrics


def main() -> None:
    params = load_params()
    p = params.instruct
    with tracking.stage_run("instruct", {"instruct": p.model_dump(), "seed": params.seed}):
        splits = build_splits(p, params.seed)
        with atomic_dir(OUT_DIR) as tmp:
            for split, examples in splits.items():
                write_examples(tmp / f"{split}.jsonl", examples)
        metrics = counts(splits)
        write_json(METRICS / "instruct.json", metrics)
        tracking.log_metrics({f"{s}/examples": len(ex) for s, ex in splits.items()})
        tracking.log_artifact(METRICS / "instruct.json")
    log.info(
        "instruct: %d train / %d prefs / %d test examples; per family (train): %s",
        metrics["train"]["total"],
        metrics["prefs"]["total"],
        metrics["test"]["total"],
        {k: v for k, v in metrics["train"].items() if k != "total"},
    )


if __name__ == "__main__":
    run_stage(main)
