"""The scaling sweep flow: train the stale sweep points concurrently, then fit the laws.

DVC stays the judge of what is stale and the keeper of dvc.lock, but a point's training runs
outside DVC so that points can overlap: under the repository lock (one DVC operation at a
time) the flow finds the stale `scaling-point@<name>` stages; each runs its stage command as a
subprocess with no lock held, then records its output in dvc.lock under the lock
(`repo.commit(stage, force=True)`, what `dvc commit` does). The `scaling-fit` stage then runs
through DVC. The end state of dvc.lock is the one `dvc repro` leaves.

Points run at most os.cpu_count() at once, each with cores / concurrent threads for torch.
MLflow: a parent run `sweep` holds one child run per point that ran and one for the fit.

    python -m flows.sweep                  # stale points, then the fit
    python -m flows.sweep --workers 1      # one point at a time
Leaves out: upstream stages (data, tokenizer): run `dvc repro tokenizer` or the pipeline first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import StageFailed, dvc_lock, metrics_markdown  # one DVC operation at once

POINT_STAGE, FIT_STAGE = "scaling-point", "scaling-fit"
WORKERS = os.cpu_count() or 1


def stale_points() -> list[tuple[str, str]]:
    """(stage name, command) of every sweep point DVC would re-run; errors if upstream is stale."""
    from dvc.repo import Repo

    with dvc_lock(), Repo(".") as repo:
        upstream = repo.status(targets=["tokenizer"], with_deps=True)
        if upstream:
            raise ValueError(
                f"stages upstream of the sweep are not up to date ({', '.join(upstream)}); run "
                "`dvc repro tokenizer` or `python -m flows.pipeline --stages data tokenizer`"
            )
        stages = repo.stage.collect(POINT_STAGE)
        return [(s.addressing, s.cmd) for s in stages if repo.status(targets=[s.addressing])]


@task(name="sweep-point", task_run_name="{stage}")
def run_point(stage: str, cmd: str, parent_run_id: str, threads: int) -> dict:
    """The point's command outside any lock, then `dvc commit` of its outputs under the lock."""
    from dvc.repo import Repo

    from tasks.tracking import PARENT_ENV

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **{PARENT_ENV: parent_run_id})
    start = time.time()
    proc = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True)
    end = time.time()
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        raise StageFailed(stage, f"exit status {proc.returncode}:\n" + "\n".join(tail))
    with dvc_lock(), Repo(".") as repo:
        repo.commit(stage, force=True)
    get_run_logger().info("%s done in %.1fs", stage, end - start)
    return {"stage": stage, "start": start, "end": end, "seconds": round(end - start, 1)}


@task(name="scaling-fit")
def run_fit(parent_run_id: str) -> dict:
    from dvc.repo import Repo

    from tasks.tracking import PARENT_ENV

    os.environ[PARENT_ENV] = parent_run_id  # read by the stage process that DVC starts
    with dvc_lock(), Repo(".") as repo:
        ran = repo.reproduce(FIT_STAGE, single_item=True)
    metrics = json.loads(Path("metrics/scaling.json").read_text())
    create_markdown_artifact(metrics_markdown(FIT_STAGE, metrics), key="scaling-fit-metrics")
    return {"ran": bool(ran), "metrics": metrics}


def artifact_key(text: str) -> str:
    """Prefect artifact keys hold lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower())


def max_overlap(results: list[dict]) -> int:
    """Most points that were training at the same moment."""
    edges = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def run_points(stages: list[str], parent_run_id: str, workers: int = WORKERS) -> list[dict]:
    """Train the stale ones of these `scaling-point@<name>` stages, at most `workers` at once.

    Call it inside a flow whose task runner allows `workers` threads. One row per stage, in the
    order given (the pipeline flow's summary rows): stage, ran, seconds, start, end, metrics.
    """
    stale = {stage: cmd for stage, cmd in stale_points() if stage in stages}
    threads = max(1, WORKERS // max(1, min(workers, len(stale))))
    futures = {s: run_point.submit(s, cmd, parent_run_id, threads) for s, cmd in stale.items()}
    done = {s: f.result() for s, f in futures.items()}
    rows = []
    for stage in stages:
        row = done.get(stage, {"stage": stage, "seconds": 0.0, "start": None, "end": None})
        name = stage.split("@", 1)[1]
        metrics_file = Path("metrics") / "scaling" / f"{name}.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        if stage in done and metrics:
            create_markdown_artifact(
                metrics_markdown(stage, metrics), key=artifact_key(f"scaling-point-{name}-metrics")
            )
        rows.append(row | {"ran": stage in done, "metrics": metrics})
    return rows


@flow(name="scaling-sweep")
def sweep(workers: int = WORKERS) -> dict:
    import mlflow

    from tasks import tracking

    stages = [stage for stage, _ in stale_points()]
    tracking.setup()
    t0 = time.perf_counter()
    with mlflow.start_run(run_name="sweep", tags={"stage": "sweep"}) as parent:
        pid = parent.info.run_id
        points = [p for p in run_points(stages, pid, workers) if p["ran"]]
        fit = run_fit(pid)
        seconds = time.perf_counter() - t0
        mlflow.log_metrics({"sweep/seconds": seconds, "sweep/points_run": len(points)})
    summary = {
        "points_run": [p["stage"] for p in points],
        "max_concurrent": max_overlap(points),
        "seconds": round(seconds, 1),
        "fit_ran": fit["ran"],
        "metrics": fit["metrics"],
    }
    get_run_logger().info("sweep: %d points run in %.1fs", len(points), seconds)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=WORKERS, help="points at once (cores)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    with ThreadPoolTaskRunner(max_workers=args.workers) as runner:
        summary = sweep.with_options(task_runner=runner)(args.workers)
    print(f"points run: {' '.join(summary['points_run']) or 'none (all up to date)'}")
    print(f"max concurrent: {summary['max_concurrent']}")
    print(f"fit: {'ran' if summary['fit_ran'] else 'up to date'}; wall {summary['seconds']}s")
    ln = summary["metrics"].get("L_N", {})
    if "saturating" in ln:
        sat = ln["saturating"]
        print(f"alpha (E + A/N^alpha): {sat['alpha']:.3f} CI {sat['alpha_ci']}")


if __name__ == "__main__":
    sys.exit(main())
