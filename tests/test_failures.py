"""Failure handling: the flow names the failed stage and why, retries only transient errors; a
NaN loss stops pretrain with a clear error, keeps the last good resume state and leaves no
partial output; a dead tracking server fails a stage at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from flows.pipeline import StageFailed, is_transient, run_stage, stage_failure
from tasks.common import ERROR_FILE_ENV
from tasks.common import run_stage as run_task
from tests.conftest import copy_repo, project_env
from tests.servers import free_port


def test_only_transient_errors_are_retried():
    assert is_transient(ConnectionError("refused")) and is_transient(TimeoutError())
    assert is_transient(StageFailed("data", "ConnectionError: ...", transient=True))
    assert not is_transient(ValueError("params.yaml: pretrain.lr"))
    assert not is_transient(StageFailed("pretrain", "NonFiniteLoss: ...", transient=False))


@pytest.mark.parametrize(
    ("error", "transient"), [(ValueError("data.files: no match"), False), (ConnectionError(), True)]
)
def test_a_failing_stage_tells_the_flow_why(tmp_path, monkeypatch, error, transient):
    file = tmp_path / "error.json"
    monkeypatch.setenv(ERROR_FILE_ENV, str(file))

    def main():
        raise error

    with pytest.raises(SystemExit):
        run_task(main)
    failure = stage_failure("data", file, RuntimeError("failed to reproduce 'data'"))
    assert str(failure) == f"stage data failed: {type(error).__name__}: {error}"
    assert failure.transient is transient


class FlakyRepo:
    """Stands in for dvc.repo.Repo: fails `fails` times with the given error, then succeeds."""

    calls, fails, error = 0, 0, None

    def __init__(self, root):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def reproduce(self, stage, single_item):
        import os

        from dvc.exceptions import ReproductionError

        FlakyRepo.calls += 1
        if FlakyRepo.calls <= FlakyRepo.fails:
            info = {"type": type(self.error).__name__, "message": str(self.error)}
            info["transient"] = is_transient(self.error)
            with open(os.environ[ERROR_FILE_ENV], "w") as f:
                json.dump(info, f)
            raise ReproductionError(stage)
        return [stage]


@pytest.mark.slow
def test_flow_retries_transient_errors_only(tmp_path, monkeypatch):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dvc.repo.Repo", FlakyRepo)
    task = run_stage.with_options(retry_delay_seconds=0)

    @flow
    def one_stage(stage: str) -> dict:
        return task(stage, "parent-run")

    with prefect_test_harness(server_startup_timeout=180):
        FlakyRepo.calls, FlakyRepo.fails, FlakyRepo.error = 0, 1, ConnectionError("no answer")
        assert one_stage("data")["ran"] and FlakyRepo.calls == 2  # retried once, then ran

        FlakyRepo.calls, FlakyRepo.fails, FlakyRepo.error = 0, 1, ValueError("data.files: none")
        with pytest.raises(StageFailed, match="stage data failed: ValueError: data.files: none"):
            one_stage("data")
        assert FlakyRepo.calls == 1  # a user error is not retried


def set_params(repo, **sections) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] |= values
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_nan_loss_stops_pretrain_and_leaves_no_partial_output(quick_pretrained, tmp_path):
    repo = copy_repo(quick_pretrained, tmp_path / "r")
    set_params(repo, pretrain={"lr": 1e30, "min_lr": 0.0, "checkpoint_interval": 1})
    for old in ("out/pretrain", "metrics/pretrain.json"):
        subprocess.run(["rm", "-rf", str(repo / old)], check=True)
    env = project_env(tmp_path) | {ERROR_FILE_ENV: str(tmp_path / "error.json")}
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.pretrain"], cwd=repo, env=env, capture_output=True, text=True
    )

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr  # one clear line, not a stack
    assert "loss is nan at step" in proc.stdout or "loss is inf at step" in proc.stdout
    error = json.loads((tmp_path / "error.json").read_text())
    assert error["type"] == "NonFiniteLoss" and not error["transient"]
    assert not (repo / "out" / "pretrain").exists()  # no partial checkpoint
    assert not (repo / "metrics" / "pretrain.json").exists()
    assert not list((repo / "out").glob(".*.tmp"))  # no temp leftovers
    assert (repo / "out" / "pretrain-resume" / "state.json").exists()  # last good state kept


@pytest.mark.slow
def test_dead_tracking_server_fails_a_stage_quickly(quick_pretrained, tmp_path):
    repo = copy_repo(quick_pretrained, tmp_path / "r")
    before = (repo / "out" / "tokenizer" / "tokenizer.json").read_bytes()
    env = project_env(tmp_path) | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.tokenizer"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "did not answer" in proc.stdout
    assert time.monotonic() - t0 < 120  # process start + a refused connection, never a hang
    assert (repo / "out" / "tokenizer" / "tokenizer.json").read_bytes() == before
