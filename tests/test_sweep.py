"""The Prefect sweep flow on the quick profile (flows/sweep.py): points train side by side, DVC
keeps the books, and changing one point's params re-runs only that point and the fit.

One scratch repo for the module; the tests run in order and build on each other.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import make_quick_repo, run_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep_repo(tmp_path_factory):
    repo = make_quick_repo(tmp_path_factory.mktemp("sweep") / "repo")
    run_in(repo, "-m", "flows.pipeline", "--stages", "data", "tokenizer")
    return repo


def summary(proc) -> dict[str, str]:
    """The flow's closing lines `<what>: <value>`."""
    rows = [line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line]
    return {k: v for k, v in rows}


def points(repo) -> list[str]:
    return list(yaml.safe_load((repo / "params.yaml").read_text())["scaling"]["points"])


def test_sweep_runs_every_point_concurrently_then_the_fit(sweep_repo):
    proc = run_in(sweep_repo, "-m", "flows.sweep", "--workers", "2")
    out = summary(proc)
    names = points(sweep_repo)
    assert out["points run"].split() == [f"scaling-point@{n}" for n in names]
    assert out["max concurrent"] == "2"
    assert out["fit"].startswith("ran")
    fit = json.loads((sweep_repo / "metrics" / "scaling.json").read_text())
    assert fit["points"] == len(names) and "alpha" in fit["L_N"]["pure"]
    status = run_in(
        sweep_repo, "-m", "dvc", "status", "scaling-fit", "--with-deps"
    ).stdout  # what `dvc repro` would re-run
    assert "up to date" in status, status


def test_second_sweep_runs_nothing(sweep_repo):
    lock = (sweep_repo / "dvc.lock").read_text()
    out = summary(run_in(sweep_repo, "-m", "flows.sweep"))
    assert out["points run"] == "none (all up to date)"
    assert out["fit"].startswith("up to date")
    assert (sweep_repo / "dvc.lock").read_text() == lock


def test_one_point_change_reruns_that_point_and_the_fit(sweep_repo):
    params_file = sweep_repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    name = points(sweep_repo)[1]
    before = {
        n: (sweep_repo / "metrics" / "scaling" / f"{n}.json").read_text()
        for n in params["scaling"]["points"]
    }
    params["scaling"]["points"][name]["tokens"] *= 2
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = summary(run_in(sweep_repo, "-m", "flows.sweep"))
    assert out["points run"] == f"scaling-point@{name}"
    assert out["fit"].startswith("ran")
    after = {n: (sweep_repo / "metrics" / "scaling" / f"{n}.json").read_text() for n in before}
    assert [n for n in before if before[n] != after[n]] == [name]
    status = run_in(sweep_repo, "-m", "dvc", "status", "scaling-fit", "--with-deps").stdout
    assert "up to date" in status, status
