"""DVC remote: stage outputs pushed to a local-directory remote come back byte-identical after
the workspace copies and the cache are deleted."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tests.conftest import make_quick_repo, run_in


def digests(root) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_push_then_pull_restores_outputs(tmp_path):
    repo = make_quick_repo(tmp_path / "repo")
    run_in(repo, "-m", "dvc", "repro", "data", "tokenizer")
    run_in(repo, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    before = digests(repo / "out")
    assert {"data/train.parquet", "tokenizer/tokenizer.json"} <= set(before)

    pushed = run_in(repo, "-m", "dvc", "push")
    assert "pushed" in pushed.stdout
    shutil.rmtree(repo / "out")
    shutil.rmtree(repo / ".dvc" / "cache")
    # the stages that ran (a bare `dvc pull` also reports the never-run stages as missing)
    run_in(repo, "-m", "dvc", "pull", "data", "tokenizer")

    assert digests(repo / "out") == before
    status = run_in(repo, "-m", "dvc", "status", "--cloud", "data", "tokenizer")
    assert "in sync" in status.stdout
