"""Shared fixtures: a scratch copy of the project on the quick profile, in its own git repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = [
    "flows",
    "tasks",
    "model",
    "dvc.yaml",
    "pyproject.toml",
    ".gitignore",
    ".dvcignore",
]


def project_env(home: Path) -> dict:
    """Environment for pipeline subprocesses: this venv first, private Prefect and MLflow."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_HOME"] = str(home / "prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_CACHE"] = str(home / "hf-datasets")
    env["PYTHONPATH"] = ""  # the copy's own packages, not the checkout's
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "LLMPIPE_PARENT_RUN_ID"):
        env.pop(key, None)
    return env


def make_quick_repo(dest: Path) -> Path:
    """Copy the project's code with profiles/quick.yaml as params.yaml; git + dvc init."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    shutil.copy2(ROOT / "profiles" / "quick.yaml", dest / "params.yaml")
    run = lambda *cmd: subprocess.run(cmd, cwd=dest, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "test")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "quick profile")
    return dest


@pytest.fixture(scope="session")
def quick_repo(tmp_path_factory) -> Path:
    return make_quick_repo(tmp_path_factory.mktemp("quick") / "repo")


def run_in(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = project_env(repo.parent)
    proc = subprocess.run(
        [sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def quick_pretrained(tmp_path_factory) -> Path:
    """A quick-profile repo where data, tokenizer and pretrain have run (without DVC/Prefect).

    Later stages' tests run their own stage in it: `run_in(repo, "-m", "tasks.sft")`. Tests
    that change params.yaml work on a copy (`copy_repo`), so they never disturb each other.
    """
    repo = make_quick_repo(tmp_path_factory.mktemp("pretrained") / "repo")
    for stage in ("data", "tokenizer", "pretrain"):
        run_in(repo, "-m", f"tasks.{stage}")
    return repo


def copy_repo(repo: Path, dest: Path) -> Path:
    """A private copy of a scratch repo (outputs included) for a test that edits params."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest
