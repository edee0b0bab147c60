"""The pipeline flow: run the DVC stages in order under Prefect, tracked in one MLflow run.

DVC decides what is stale: a stage whose code, inputs and params are unchanged is skipped, and
`dvc.lock` ends the same as after `dvc repro`. Stages run one at a time (one DVC operation on the
repository at once), except the scaling-sweep points, which train side by side, one per core
(flows/sweep.py), each recorded in dvc.lock under the same lock. Each stage's metrics become a
Prefect artifact; the MLflow parent run `pipeline` holds one child run per stage that ran.

    python -m flows.pipeline                      # every stage
    python -m flows.pipeline --stages data tokenizer
Offline, Prefect starts a temporary local server for the run (a few seconds); scheduling needs
a real server (see flows/serve.py and the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # before prefect is imported
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

DVC_LOCK = threading.Lock()  # never two DVC operations on the repository at once


def dvc_lock() -> threading.Lock:
    """DVC_LOCK, looked up by reference. Prefect's runner (`serve`) cloudpickles a flow's
    function by value with the globals it names, and a lock cannot be pickled: tasks and flows
    must reach it through this function, never name DVC_LOCK directly."""
    return DVC_LOCK


def read_stages() -> list[str]:
    """Every stage in dvc.yaml (foreach instances expanded), upstream before downstream.

    The order comes from DVC's own graph (a stage's deps that are another stage's outs), with
    ties broken by the order in dvc.yaml, so the flow and `dvc repro` agree on what comes first.
    """
    import networkx as nx
    from dvc.repo import Repo

    with DVC_LOCK, Repo(".") as repo:
        stages = list(repo.index.stages)
        order = {s.addressing: i for i, s in enumerate(stages)}
        upstream_first = repo.index.graph.reverse(copy=True)
        ranked = nx.lexicographical_topological_sort(
            upstream_first, key=lambda s: order[s.addressing]
        )
        return [s.addressing for s in ranked]


def metrics_markdown(stage: str, metrics: dict) -> str:
    rows = [f"| {k} | {v} |" for k, v in metrics.items() if not isinstance(v, dict | list)]
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += [f"| {k}.{kk} | {vv} |" for kk, vv in v.items()]
    return f"### {stage}\n\n| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"


class StageFailed(RuntimeError):
    """A stage exited with an error: names the stage and why; `transient` allows a retry."""

    def __init__(self, stage: str, reason: str, transient: bool = False):
        super().__init__(f"stage {stage} failed: {reason}")
        self.stage, self.transient = stage, transient


def is_transient(exc: BaseException | None) -> bool:
    """Worth a retry: a server that did not answer or a timeout; never bad params or data."""
    if isinstance(exc, StageFailed):
        return exc.transient
    return isinstance(exc, ConnectionError | TimeoutError)


def transient_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry the stage only after a transient error."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return is_transient(exc if exc is not None else state.result(raise_on_failure=False))


def stage_failure(stage: str, error_file: Path, dvc_error: Exception) -> StageFailed:
    """What the stage process reported (tasks.common.report_failure), else DVC's own message."""
    try:
        info = json.loads(error_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        cause = dvc_error.__cause__ or dvc_error
        return StageFailed(stage, f"{dvc_error}: {cause}")
    return StageFailed(stage, f"{info['type']}: {info['message']}", bool(info["transient"]))


@task(
    name="dvc-stage",
    task_run_name="{stage}",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=transient_only,
)
def run_stage(stage: str, parent_run_id: str) -> dict:
    """`dvc repro --single-item <stage>`; returns whether it ran and its metrics.

    A failure raises StageFailed naming the stage and the stage's own error line; Prefect
    retries it only when that error is transient (see `is_transient`).
    """
    import tempfile

    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from tasks.common import ERROR_FILE_ENV
    from tasks.tracking import PARENT_ENV

    logger = get_run_logger()
    # DVC's "To track the changes with git, run: git add dvc.lock" hint, once per stage: noise here
    logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)
    os.environ[PARENT_ENV] = parent_run_id  # read by the stage process that DVC starts
    t0 = time.perf_counter()
    with dvc_lock(), tempfile.TemporaryDirectory() as tmp:
        error_file = Path(tmp) / "error.json"
        os.environ[ERROR_FILE_ENV] = str(error_file)  # the stage writes why it failed here
        try:
            with Repo(".") as repo:
                ran = repo.reproduce(stage, single_item=True)
        except DvcException as e:
            raise stage_failure(stage, error_file, e) from e
        finally:
            os.environ.pop(ERROR_FILE_ENV, None)
    seconds = time.perf_counter() - t0
    metrics_file = Path("metrics") / f"{stage}.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    if metrics:
        create_markdown_artifact(
            metrics_markdown(stage, metrics),
            key=f"{stage}-metrics",
            description=f"metrics of stage {stage}",
        )
    logger.info("stage %s %s in %.1fs", stage, "ran" if ran else "was up to date", seconds)
    return {"stage": stage, "ran": bool(ran), "seconds": round(seconds, 1), "metrics": metrics}


def run_stages(stages: list[str], parent_run_id: str) -> list[dict]:
    """Each stage through DVC in order, except the scaling-sweep points: those train together,
    up to one per core, where the first of them comes (flows/sweep.py; nothing downstream of a
    point comes before it in DVC's order, as every point depends on the tokenizer only)."""
    from flows import sweep  # imports this module: a module-level import would be circular

    points = [s for s in stages if s.startswith(f"{sweep.POINT_STAGE}@")]
    results = []
    for stage in stages:
        if stage not in points:
            results.append(run_stage(stage, parent_run_id))
        elif stage == points[0]:
            results += sweep.run_points(points, parent_run_id)
    return results


@flow(name="llm-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def pipeline(stages: list[str] | None = None) -> list[dict]:
    import mlflow

    from tasks import tracking

    known = read_stages()
    stages = stages or known
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {known}")
    tracking.setup()
    with mlflow.start_run(run_name="pipeline", tags={"stage": "pipeline"}) as parent:
        results = run_stages(stages, parent.info.run_id)
        # MLflow metric names cannot hold '@' (scaling-point@n1): foreach instances use ':'
        seconds = {f"{r['stage'].replace('@', ':')}/seconds": r["seconds"] for r in results}
        mlflow.log_metrics(seconds)
        mlflow.set_tag("stages_run", ",".join(r["stage"] for r in results if r["ran"]) or "none")
    summary = "\n".join(
        f"- {r['stage']}: {'ran' if r['ran'] else 'up to date'} ({r['seconds']}s)" for r in results
    )
    create_markdown_artifact(f"## Pipeline\n\n{summary}\n", key="pipeline-summary")
    get_run_logger().info(
        "pipeline done:\n%s\nMLflow: %s (run %s)",
        summary,
        tracking.tracking_uri(),
        parent.info.run_id,
    )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", help="stages to run, in order (default: all)")
    args = parser.parse_args(argv)
    try:
        results = pipeline(args.stages)
    except StageFailed as e:
        sys.exit(f"pipeline failed: {e}")
    width = max((len(r["stage"]) for r in results), default=0)
    for r in results:
        print(f"{r['stage']:<{width}} {'ran' if r['ran'] else 'up to date':<11} {r['seconds']:>7}s")
    print(
        f"metrics: {Path('metrics').resolve()}  |  compare runs: mlflow ui "
        f"--backend-store-uri {os.environ.get('MLFLOW_TRACKING_URI', 'sqlite:///mlflow.db')}"
    )
    report = Path("out") / "report" / "report.md"
    if report.exists():
        print(f"report card: {report.resolve()}")


if __name__ == "__main__":
    sys.exit(main())
