"""scaling-fit stage: fit the laws to the sweep points and check them on a held-out point.

Reads out/scaling/points/<name>.json for every point in `scaling.points`, then:
- L(N) at equal tokens (the token-budget points): pure and saturating laws in non-embedding N,
  bootstrap CIs, and the held-out check (fit on all but the largest N, predict it);
- L(D) for the model size trained at the most token counts;
- IsoFLOP: per compute budget, loss against total N (parabola in ln N), then N_opt = k C^a;
- compute-optimal N and D for `scaling.fit.budgets`, by the fitted law and by the fixed
  tokens-per-parameter rule.
An analysis the sweep has too few points for is recorded as a `skipped` reason, not an error.

    python -m tasks.scaling_fit
Writes metrics/scaling.json and plots/scaling/ (loss_vs_n.csv / .png, isoflop.csv / .png,
n_opt.png).
"""

from __future__ import annotations

from collections import defaultdict

from model import scaling
from tasks import tracking
from tasks.common import log, run_stage
from tasks.io import METRICS, PLOTS, read_json, write_json, write_text
from tasks.scaling_point import POINTS_DIR

PLOT_DIR = PLOTS / "scaling"


def load_points(params) -> list[dict]:
    if not params.scaling.points:
        raise ValueError("params.yaml: scaling.points is empty; add sweep points to fit")
    return [read_json(POINTS_DIR / f"{name}.json") for name in params.scaling.points]


def size_sweep(points: list[dict]) -> list[dict]:
    """The largest group of token-budget points that share one token count (one per size)."""
    groups = defaultdict(dict)
    for p in points:
        if p["budget_flops"] is None:
            groups[p["tokens"]][p["params_non_embedding"]] = p
    best = max(groups.values(), key=len, default={})
    return sorted(best.values(), key=lambda p: p["params_non_embedding"])


def law_fits(x, loss, f, what: str) -> dict:
    """Pure and saturating fits with bootstrap CIs; the bootstrap refits stay out of the JSON."""
    out = {}
    for kind in ("pure", "saturating"):
        boot = scaling.bootstrap(x, loss, kind, f.n_boot, f.ci, seed=0)
        out[kind] = boot["law"].to_dict() | {"alpha_ci": boot["alpha_ci"]}
        if kind == "saturating":
            out[kind]["E_ci"] = boot["E_ci"]
        out[f"_{kind}_samples"] = boot["samples"]
    out["variable"] = what
    return out


def fit_n(sweep: list[dict], f) -> dict:
    if len(sweep) < scaling.MIN_POINTS:
        return {"skipped": f"{len(sweep)} sizes at equal tokens; need {scaling.MIN_POINTS}"}
    x = [p["params_non_embedding"] for p in sweep]
    loss = [p["val_loss"] for p in sweep]
    out = law_fits(x, loss, f, "params_non_embedding") | {"tokens": sweep[0]["tokens"]}
    if len(sweep) > scaling.MIN_POINTS:
        out["holdout"] = {k: scaling.holdout_error(x, loss, k) for k in ("pure", "saturating")}
    else:
        out["holdout"] = {"skipped": "the held-out check needs 4 sizes"}
    return out


def fit_d(points: list[dict], f) -> dict:
    """L(D) for the size with the most distinct token counts (IsoFLOP points included)."""
    by_size = defaultdict(dict)
    for p in points:
        by_size[p["params_non_embedding"]][p["tokens"]] = p["val_loss"]
    n, runs = max(by_size.items(), key=lambda kv: len(kv[1]), default=(0, {}))
    if len(runs) < scaling.MIN_POINTS:
        return {"skipped": f"no size trained at {scaling.MIN_POINTS}+ token counts"}
    d = sorted(runs)
    return law_fits(d, [runs[t] for t in d], f, "tokens") | {"params_non_embedding": n}


def fit_isoflop(points: list[dict]) -> dict:
    budgets = defaultdict(list)
    for p in points:
        if p["budget_flops"] is not None:
            budgets[p["budget_flops"]].append((p["params"], p["val_loss"]))
    usable = {c: tuple(zip(*sorted(v), strict=True)) for c, v in budgets.items() if len(v) >= 3}
    if len(usable) < 2:
        return {"skipped": f"{len(usable)} compute budgets with 3+ sizes; need 2"}
    try:
        return scaling.fit_isoflop(usable) | {"count": "total params (tied embedding once)"}
    except ValueError as e:  # a real sweep outcome (no interior minimum), not a usage error
        return {"skipped": str(e)}


def compute_optimal(iso: dict, f) -> list[dict]:
    rows = []
    for flops in f.budgets:
        row = {"flops": flops, "rule": scaling.compute_optimal(flops, f.tokens_per_param)}
        if "a" in iso:
            row["fitted"] = scaling.compute_optimal_fitted(flops, iso["a"], iso["k"])
        rows.append(row)
    return rows


def analyse(params) -> tuple[dict, list[dict]]:
    f = params.scaling.fit
    points = load_points(params)
    sweep = size_sweep(points)
    iso = fit_isoflop(points)
    results = {
        "points": len(points),
        "size_sweep": [p["name"] for p in sweep],
        "n_range": sweep[-1]["params_non_embedding"] / sweep[0]["params_non_embedding"]
        if sweep
        else 0,
        "L_N": fit_n(sweep, f),
        "L_D": fit_d(points, f),
        "isoflop": iso,
        "compute_optimal": compute_optimal(iso, f),
        "sweep_train_seconds": sum(p["train_seconds"] for p in points),
    }
    return results, points


def headline(results: dict) -> dict:
    """Flat numbers for MLflow and the log line."""
    flat = {"scaling/points": results["points"]}
    ln = results["L_N"]
    for kind in ("pure", "saturating"):
        if kind in ln:
            flat[f"scaling/alpha_{kind}"] = ln[kind]["alpha"]
            flat[f"scaling/alpha_{kind}_lo"], flat[f"scaling/alpha_{kind}_hi"] = ln[kind][
                "alpha_ci"
            ]
            if kind in ln.get("holdout", {}):
                flat[f"scaling/holdout_error_{kind}"] = ln["holdout"][kind]["rel_error"]
    if "a" in results["isoflop"]:
        flat["scaling/isoflop_a"] = results["isoflop"]["a"]
    return flat


def strip_samples(d):
    if isinstance(d, dict):
        return {k: strip_samples(v) for k, v in d.items() if not k.startswith("_")}
    if isinstance(d, list):
        return [strip_samples(v) for v in d]
    return d


def main() -> None:
    from tasks import scaling_plots
    from tasks.params import load_params

    params = load_params()
    results, points = analyse(params)
    with tracking.stage_run("scaling-fit", {"scaling_fit": params.scaling.fit.model_dump()}):
        paths = scaling_plots.write_all(results, points, PLOT_DIR)
        write_text(PLOT_DIR / "points.csv", points_csv(points))
        write_json(METRICS / "scaling.json", strip_samples(results))
        tracking.log_metrics(headline(results))
        for path in [*paths, METRICS / "scaling.json", PLOT_DIR / "points.csv"]:
            tracking.log_artifact(path)
    log.info("scaling-fit: %s", " | ".join(f"{k} {v:.4g}" for k, v in headline(results).items()))


def points_csv(points: list[dict]) -> str:
    cols = ["name", "params", "params_non_embedding", "tokens", "flops", "val_loss"]
    rows = [",".join(str(p[c]) for c in cols) for p in points]
    return ",".join(cols) + "\n" + "\n".join(rows) + "\n"


if __name__ == "__main__":
    run_stage(main)
