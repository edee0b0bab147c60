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
import os
import subprocess
import sys
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import DVC_LOCK, metrics_markdown  # one DVC operation at a time

POINT_STAGE, FIT_STAGE = "scaling-point", "scaling-fit"
WORKERS = os.cpu_count() or 1


def stale_points() -> list[tuple[str, str]]:
    """(stage name, command) of every sweep point DVC would re-run; errors if upstream is stale."""
    from dvc.repo import Repo

    with DVC_LOCK, Repo(".") as repo:
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
        raise RuntimeError(f"{stage} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    with DVC_LOCK, Repo(".") as repo:
        repo.commit(stage, force=True)
    get_run_logger().info("%s done in %.1fs", stage, end - start)
    return {"stage": stage, "start": start, "end": end, "seconds": round(end - start, 1)}


@task(name="scaling-fit")
def run_fit(parent_run_id: str) -> dict:
    import json
    from pathlib import Path

    from dvc.repo import Repo

    from tasks.tracking import PARENT_ENV

    os.environ[PARENT_ENV] = parent_run_id  # read by the stage process that DVC starts
    with DVC_LOCK, Repo(".") as repo:
        ran = repo.reproduce(FIT_STAGE, single_item=True)
    metrics = json.loads(Path("metrics/scaling.json").read_text())
    create_markdown_artifact(metrics_markdown(FIT_STAGE, metrics), key="scaling-fit-metrics")
    return {"ran": bool(ran), "metrics": metrics}


def max_overlap(results: list[dict]) -> int:
    """Most points that were training at the same moment."""
    edges = sorted([(r["start"], 1) for r in results] + [(r["end"], -1) for r in results])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


@flow(name="scaling-sweep")
def sweep(workers: int = WORKERS) -> dict:
    import mlflow

    from tasks import tracking

    stale = stale_points()
    threads = max(1, WORKERS // max(1, min(workers, len(stale))))
    tracking.setup()
    t0 = time.perf_counter()
    with mlflow.start_run(run_name="sweep", tags={"stage": "sweep"}) as parent:
        pid = parent.info.run_id
        futures = [run_point.submit(stage, cmd, pid, threads) for stage, cmd in stale]
        points = [f.result() for f in futures]
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
