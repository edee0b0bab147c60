"""Tracking server: stages log to `mlflow server` on loopback exactly as to the SQLite file, the
pretrain stage registers the base model with an alias, and a dead server is a quick clear error.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from tasks import tracking
from tasks.checkpoint import load_checkpoint
from tests.conftest import copy_repo, project_env
from tests.servers import free_port, start, stop, wait_http


def test_unreachable_tracking_server_is_a_quick_clear_error(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"MLflow tracking server {uri} did not answer"):
        tracking.setup()
    assert time.monotonic() - t0 < 5  # a refused connection, no mlflow import first


@pytest.fixture
def mlflow_server(tmp_path):
    port, log = free_port(), tmp_path / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    cmd += ["--artifacts-destination", str(tmp_path / "server-artifacts")]
    proc = start(cmd, log, env=project_env(tmp_path), cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.mark.slow
def test_pretrain_logs_and_registers_on_a_tracking_server(
    quick_pretrained, tmp_path, mlflow_server, monkeypatch
):
    repo = copy_repo(quick_pretrained, tmp_path / "r")
    (repo / "mlflow.db").unlink()  # nothing may land in the local SQLite store
    env = project_env(repo.parent) | {"MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.pretrain"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (repo / "mlflow.db").exists()

    import mlflow
    from mlflow import MlflowClient

    from tasks import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["llmpipe"], filter_string="tags.stage='pretrain'")
    assert len(runs) == 1 and runs["metrics.val/loss"].notna().all()
    version = MlflowClient().get_model_version_by_alias(registry.BASE_MODEL, registry.ALIAS)
    assert version.run_id == runs["run_id"][0]

    # the registered folder is the checkpoint: same weights as out/pretrain
    folder = registry.download(registry.BASE_MODEL, tmp_path / "dl")
    a, b = load_checkpoint(folder), load_checkpoint(repo / "out" / "pretrain")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
