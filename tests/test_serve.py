"""Scheduling: a real Prefect server on loopback, the pipeline served on a short interval, and
a scheduled run of the data stage that reaches Completed."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from datetime import datetime

import pytest

from flows.serve import check_api, make_schedule
from tests.conftest import make_quick_repo, project_env
from tests.servers import free_port, start, stop, wait_http


def test_serve_refuses_without_a_server():
    with pytest.raises(ValueError, match="PREFECT_API_URL is not set"):
        check_api(None)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="did not answer"):
        check_api(f"http://127.0.0.1:{free_port()}/api", timeout=3)
    assert time.monotonic() - t0 < 10
    assert make_schedule("0 3 * * *", "Europe/Paris", None).timezone == "Europe/Paris"
    assert make_schedule("0 3 * * *", "UTC", 30).interval.total_seconds() == 30


def test_served_flow_can_be_pickled():
    """Prefect's runner cloudpickles the flow function by value; a lock among the globals it
    names (DVC_LOCK used directly in a task) makes every scheduled run crash at start."""
    import cloudpickle

    from flows.pipeline import pipeline

    assert cloudpickle.loads(cloudpickle.dumps(pipeline)).name == "llm-pipeline"


def flow_runs(api: str, states: list[str]) -> list[dict]:
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": states}}}, "limit": 10}).encode()
    req = urllib.request.Request(
        f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_for_completed_run(api: str, logs: list, timeout: float = 400) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if done := flow_runs(api, ["COMPLETED"]):
            return done[0]
        if bad := flow_runs(api, ["FAILED", "CRASHED"]):
            tails = "\n".join(p.read_text()[-3000:] for p in logs)
            raise AssertionError(f"scheduled run {bad[0]['state']['message']}:\n{tails}")
        time.sleep(2)
    raise AssertionError("no scheduled run completed:\n" + logs[-1].read_text()[-3000:])


def seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


@pytest.mark.slow
def test_scheduled_run_completes_on_a_local_server(tmp_path):
    repo = make_quick_repo(tmp_path / "repo")
    env = project_env(tmp_path) | {"PREFECT_UI_ENABLED": "false"}
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server_cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    server = start([*server_cmd, "--port", str(port)], server_log, env=env, cwd=tmp_path)
    served = None
    try:
        wait_http(f"{api}/health", server, server_log)
        serve_env = env | {"PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
        serve_cmd = [sys.executable, "-m", "flows.serve", "--interval", "15", "--stages", "data"]
        served = start(serve_cmd, serve_log, env=serve_env, cwd=repo)
        run = wait_for_completed_run(api, [server_log, serve_log])
    finally:
        for proc in (served, server):
            if proc is not None:
                stop(proc)

    trigger_to_done = seconds(run["expected_start_time"], run["end_time"])
    print(
        f"scheduled run: trigger -> completed {trigger_to_done:.1f}s "
        f"(start delay {seconds(run['expected_start_time'], run['start_time']):.1f}s, "
        f"run {run['total_run_time']:.1f}s)"
    )
    assert run["deployment_id"] and run["auto_scheduled"]
    assert (repo / "out" / "data").is_dir() and "data:" in (repo / "dvc.lock").read_text()
    assert 0 < trigger_to_done < 400
