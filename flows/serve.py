"""Serve the pipeline flow on a schedule from a Prefect server (cron from params or the CLI).

Offline Prefect cannot schedule: a schedule lives in a server's database and fires while this
process (the runner) polls it. So: start a server on loopback, point PREFECT_API_URL at it,
then serve. The runner executes one run at a time (never two DVC operations on the repository)
and keeps running until Ctrl-C, which pauses the schedule.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    export PREFECT_API_URL=http://127.0.0.1:4200/api            # terminal 2
    python -m flows.serve                                       # params.yaml `schedule`
    python -m flows.serve --cron "30 2 * * 1-5" --timezone Europe/Paris --stages data tokenizer
    python -m flows.serve --interval 3600                       # every hour instead of a cron
Runs, logs and artifacts appear in the server's UI at http://127.0.0.1:4200.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # before prefect is imported


def check_api(url: str | None, timeout: float = 10.0) -> str:
    """The Prefect API URL, or a clear error when it is unset or the server does not answer."""
    if not url:
        raise ValueError(
            "PREFECT_API_URL is not set: scheduling needs a Prefect server. Start one with "
            "`prefect server start --host 127.0.0.1 --port 4200` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"Prefect server {url} did not answer within {timeout:.0f}s ({e}); start it with "
            "`prefect server start --host 127.0.0.1 --port <port>`"
        ) from e
    return url


def make_schedule(cron: str, timezone: str, interval: float | None):
    """A Prefect schedule: every `interval` seconds when given, else the cron in `timezone`."""
    from prefect.schedules import Cron, Interval

    if interval is not None:
        if interval <= 0:
            raise ValueError(f"--interval must be positive seconds, got {interval}")
        return Interval(interval, timezone=timezone)
    return Cron(cron, timezone=timezone)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cron", help="cron string (default: params.yaml schedule.cron)")
    parser.add_argument("--interval", type=float, help="seconds between runs (overrides cron)")
    parser.add_argument("--timezone", help="IANA time zone (default: schedule.timezone)")
    parser.add_argument("--stages", nargs="+", help="stages to run (default: schedule.stages)")
    parser.add_argument("--name", help="deployment name (default: schedule.name)")
    parser.add_argument("--params", default="params.yaml", help="params file to read")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from tasks.params import ScheduleParams, load_params

    args = parse_args(argv)
    p = load_params(args.params).schedule
    overrides = {"cron": args.cron, "timezone": args.timezone, "name": args.name}
    p = ScheduleParams(**(p.model_dump() | {k: v for k, v in overrides.items() if v}))
    stages = args.stages or p.stages or None
    check_api(os.environ.get("PREFECT_API_URL"))
    schedule = make_schedule(p.cron, p.timezone, args.interval)

    from flows.pipeline import pipeline

    when = f"every {args.interval:g}s" if args.interval else f"cron '{p.cron}' ({p.timezone})"
    print(f"serving llm-pipeline/{p.name}: {when}, stages {stages or 'all'}", flush=True)
    pipeline.serve(
        name=p.name,
        schedules=[schedule],
        parameters={"stages": stages},
        limit=1,  # one run at a time: never two DVC operations on the repository
        description="the llmpipe pipeline on a schedule (flows/serve.py)",
    )


if __name__ == "__main__":
    from tasks.common import run_stage

    run_stage(main)
