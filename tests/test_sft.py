"""The instruct and sft stages on the quick profile, and the instruct stage's user files."""

from __future__ import annotations

import json

import pytest

from model.instruct import FAMILIES
from tasks.instruct import build_splits, read_examples, write_examples
from tasks.params import InstructParams
from tests.conftest import run_in


def test_user_files_join_the_splits(tmp_path):
    alpaca = tmp_path / "a.json"
    records = [{"instruction": f"Say {i}", "output": str(i)} for i in range(40)]
    alpaca.write_text(json.dumps(records), encoding="utf-8")
    chat = tmp_path / "c.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat.write_text(json.dumps({"messages": turns}) + "\n", encoding="utf-8")
    p = InstructParams(
        families=["copy"], n_train_per_family=5, n_test_per_family=2, files=[str(alpaca), str(chat)]
    )
    splits = build_splits(p, seed=0)
    families = [ex.family for s in ("train", "test") for ex in splits[s]]
    assert families.count("copy") == 7 and families.count("alpaca") == 40
    assert families.count("chat") == 1
    assert {ex.family for ex in splits["prefs"]} == {"copy"}  # generated prompts only
    assert {ex.family for ex in splits["test"]} >= {"copy", "alpaca"}  # 40 records: some test
    # round trip through the stage's files
    write_examples(tmp_path / "train.jsonl", splits["train"])
    assert read_examples("train", tmp_path) == splits["train"]


def test_user_files_bad_suffix_and_bad_family(tmp_path):
    with pytest.raises(ValueError, match="data.txt.*expected .json"):
        build_splits(InstructParams(files=[str(tmp_path / "data.txt")]), seed=0)
    with pytest.raises(ValueError, match="unknown families"):
        InstructParams(families=["juggle"])
    with pytest.raises(FileNotFoundError, match="instruct stage"):
        read_examples("train", tmp_path)


@pytest.mark.slow
def test_sft_stage_on_quick_profile(quick_pretrained):
    repo = quick_pretrained
    run_in(repo, "-m", "tasks.instruct")
    counts = json.loads((repo / "metrics/instruct.json").read_text())
    assert counts["train"]["total"] == 40 * len(FAMILIES) and counts["test"]["copy"] == 10

    run_in(repo, "-m", "tasks.sft")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "transcripts.md"):
        assert (repo / "out/sft" / name).exists(), name
    assert json.loads((repo / "out/sft/config.json").read_text())["stage"] == "sft"
    m = json.loads((repo / "metrics/sft.json").read_text())
    for who in ("base", "sft"):
        assert set(m[who]["exact_match"]) == {*FAMILIES, "all"}
        assert 0 <= m[who]["end_rate"] <= 1 and m[who]["response_loss"] > 0
    # learning shows: the response loss drops, or an easy family improves
    easy = [f for f, fam in FAMILIES.items() if fam.level == "easy"]
    gained = any(m["sft"]["exact_match"][f] > m["base"]["exact_match"][f] for f in easy)
    assert gained or m["sft"]["response_loss"] < m["base"]["response_loss"] - 0.3
    rows = (repo / "plots/sft/train.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == 1 + m["steps"]
    assert "## copy" in (repo / "out/sft/transcripts.md").read_text()
    assert not (repo / "out/sft-resume").exists()
