"""MLflow model registry: publish a checkpoint folder as a version of a registered model.

A stage calls `register_checkpoint` inside its `tracking.stage_run`: the folder's files
(safetensors weights, config.json, tokenizer.json) are logged as the run's `model/` artifacts, a
new version of the registered model points at them, and an alias moves to that version. A
consumer fetches a whole checkpoint folder by alias, wherever the tracking server keeps it:

    mlflow.artifacts.download_artifacts("models:/llmpipe-base@current", dst_path="base")
Leaves out: MLflow "flavors" (an MLmodel file / pyfunc wrapper): the checkpoints load with
`tasks.checkpoint.load_checkpoint`, never through pickles. The alias `latest` is reserved by
MLflow (`models:/<name>/latest` already means the newest version), hence `current`.
"""

from __future__ import annotations

from pathlib import Path

from tasks.common import log
from tasks.distributed import is_main

ALIAS = "current"  # the alias each stage moves to its newest model version
BASE_MODEL = "llmpipe-base"  # pretrain
ALIGNED_MODEL = "llmpipe-aligned"  # ppo
QUANTIZED_MODEL = "llmpipe-quantized"  # quantize


def register_checkpoint(
    path: str | Path,
    name: str,
    alias: str = ALIAS,
    tags: dict | None = None,
    artifact_path: str = "model",
) -> str | None:
    """Register the checkpoint folder `path` as a new version of `name`, aliased `alias`.

    The folder is logged under the run's `artifact_path` (one per folder when a stage registers
    several). Needs an active MLflow run (the stage's). Returns the version, or None on ranks
    other than 0 (only rank 0 talks to MLflow).
    """
    if not is_main():
        return None
    import mlflow
    from mlflow import MlflowClient

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no checkpoint folder to register")
    if alias.lower() == "latest":
        raise ValueError("alias 'latest' is reserved by MLflow; pick another (e.g. 'current')")
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_checkpoint needs an active MLflow run (tracking.stage_run)")

    mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    client = MlflowClient()
    ensure_registered_model(client, name)
    version = client.create_model_version(
        name,
        source=mlflow.get_artifact_uri(artifact_path),
        run_id=run.info.run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
    ).version
    client.set_registered_model_alias(name, alias, version)
    log.info("registered %s as models:/%s@%s (version %s)", path, name, alias, version)
    return str(version)


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="checkpoints of the llmpipe pipeline")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def download(name: str, dst: str | Path, alias: str = ALIAS) -> Path:
    """Fetch the checkpoint folder that `name@alias` points at into `dst`; return its path."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{alias}", dst_path=str(dst)))
