"""MLflow run helper: one child run per stage under the pipeline's parent run.

The tracking URI defaults to a SQLite file at the repository root (`sqlite:///mlflow.db`);
`MLFLOW_TRACKING_URI` overrides it. The parent run id reaches a stage through
`LLMPIPE_PARENT_RUN_ID`, never through `MLFLOW_RUN_ID`: MLflow would resume (and overwrite)
the parent with that one. Non-finite metric values are refused with an error naming the key,
since NaN breaks the UI. Under torchrun only rank 0 talks to MLflow: on the other ranks
`stage_run` yields None and the log functions do nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tasks.distributed import is_main
from tasks.io import check_finite, flatten

EXPERIMENT = "llmpipe"
PARENT_ENV = "LLMPIPE_PARENT_RUN_ID"
log = logging.getLogger(__name__)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def check_server(uri: str, timeout: float = 15.0) -> None:
    """Fail fast with a clear error when an HTTP tracking server does not answer.

    A refused connection fails at once; `timeout` bounds a silent host (a busy server's first
    request took ~6 s on a loaded 2-core machine, hence not less).
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"MLflow tracking server {uri} did not answer within {timeout:.0f}s ({e}); start it "
            "or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from e


def setup() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    uri = tracking_uri()
    check_server(uri)  # before importing mlflow (seconds): a dead server fails at once
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)


def _param_value(v) -> str:
    return str(v)[:6000]  # MLflow's limit on a param value's length


@contextlib.contextmanager
def stage_run(stage: str, params: dict, resume_run_id: str | None = None) -> Iterator[str]:
    """Open the stage's MLflow run (nested under the pipeline run when there is one).

    Yields the run id. `resume_run_id` reopens the run of an interrupted attempt, whose params
    are already logged (MLflow refuses to change a logged param).
    """
    import mlflow

    if not is_main():
        yield None
        return
    setup()
    parent = os.environ.get(PARENT_ENV) or None
    tags = {"stage": stage}
    with mlflow.start_run(
        run_id=resume_run_id,
        run_name=None if resume_run_id else stage,
        parent_run_id=parent,
        tags=tags,
    ) as run:
        if resume_run_id is None:
            flat = {k: _param_value(v) for k, v in flatten(params).items()}
            mlflow.log_params(flat)
        yield run.info.run_id


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log finite metrics to the active run; raise ValueError naming any NaN/inf key."""
    import mlflow

    check_finite(metrics, f"metrics at step {step}")
    if not is_main():
        return
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    if not is_main():
        return
    mlflow.log_artifact(str(path), artifact_path=artifact_path)
