"""End to end on the quick profile: Prefect runs the DVC stages, MLflow records them.

One scratch git repo for the module; the tests run in order and build on each other: a first
full run, a second run that re-runs nothing, a pretrain param change that re-runs pretrain only,
then the MLflow store is checked for the parent run and its children.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_in

pytestmark = pytest.mark.slow
CHAIN = ["data", "tokenizer", "pretrain"]


def ran_stages(proc) -> list[str]:
    """Stages the flow's summary table reports as ran (lines `<stage> ran <seconds>s`)."""
    lines = [line.split() for line in proc.stdout.splitlines()]
    return [p[0] for p in lines if len(p) == 3 and p[1] == "ran" and p[2].endswith("s")]


def all_stages(repo) -> list[str]:
    code = "from flows.pipeline import read_stages; print(' '.join(read_stages()))"
    return run_in(repo, "-c", code).stdout.split()


def test_first_run_runs_every_stage(quick_repo):
    stages = all_stages(quick_repo)
    assert [s for s in stages if s in CHAIN] == CHAIN  # upstream before downstream
    proc = run_in(quick_repo, "-m", "flows.pipeline")
    assert ran_stages(proc) == stages
    for stage in CHAIN:
        assert (quick_repo / "metrics" / f"{stage}.json").exists()
    pretrain = json.loads((quick_repo / "metrics" / "pretrain.json").read_text())
    assert pretrain["val_loss"] < pretrain["unigram_loss"] + 0.5  # 30 tiny steps: near unigram
    assert (quick_repo / "out" / "pretrain" / "model.safetensors").exists()
    assert "sample 1" in (quick_repo / "out" / "pretrain" / "samples.txt").read_text()
    assert f"report card: {quick_repo / 'out' / 'report' / 'report.md'}" in proc.stdout


def test_second_run_reruns_nothing_and_matches_dvc(quick_repo):
    lock_before = (quick_repo / "dvc.lock").read_text()
    proc = run_in(quick_repo, "-m", "flows.pipeline")
    assert ran_stages(proc) == []
    assert (quick_repo / "dvc.lock").read_text() == lock_before
    status = run_in(quick_repo, "-m", "dvc", "status")  # what `dvc repro` would re-run
    assert "up to date" in status.stdout, status.stdout


def test_pretrain_param_change_reruns_pretrain_only(quick_repo):
    params_file = quick_repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["pretrain"]["max_steps"] = 20
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_in(quick_repo, "-m", "flows.pipeline", "--stages", *CHAIN)
    assert ran_stages(proc) == ["pretrain"]
    assert json.loads((quick_repo / "metrics" / "pretrain.json").read_text())["steps"] == 20
    status = run_in(quick_repo, "-m", "dvc", "status", *CHAIN, "--with-deps").stdout
    assert "up to date" in status, status


def test_mlflow_holds_parent_and_stage_children(quick_repo, tmp_path, monkeypatch):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{quick_repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llmpipe")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 3
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == sorted(all_stages(quick_repo))
    pretrain = next(r for r in children if r.data.tags["stage"] == "pretrain")
    assert pretrain.data.params["pretrain.max_steps"] == "30"
    assert "val_loss" in pretrain.data.metrics or "val/loss" in pretrain.data.metrics
    curve = client.get_metric_history(pretrain.info.run_id, "train/loss")
    assert len(curve) >= 5 and all(m.step > 0 for m in curve)
    artifacts = {a.path for a in client.list_artifacts(pretrain.info.run_id)}
    assert {"samples.txt", "config.json"} <= artifacts
    # the base, aligned and quantized models are registered, each version under an alias
    # (a models:/ URI resolves through the registry URI, which ignores `tracking_uri`)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", client.tracking_uri)
    for name, alias in [
        ("llmpipe-base", "current"),
        ("llmpipe-aligned", "current"),
        ("llmpipe-quantized", "ppo-int8-channel"),
        ("llmpipe-quantized", "pretrain-int4-g32"),
    ]:
        uri = f"models:/{name}@{alias}"
        folder = mlflow.artifacts.download_artifacts(
            uri, dst_path=str(tmp_path / name / alias), tracking_uri=client.tracking_uri
        )
        files = {p.name for p in Path(folder).iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= files, (uri, files)
    # the third pipeline run re-ran pretrain only: exactly one child
    third = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[2].info.run_id]
    assert [r.data.tags["stage"] for r in third] == ["pretrain"]
