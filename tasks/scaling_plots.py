"""Figures and curve files of the scaling-fit stage (matplotlib, Agg backend: no display).

loss_vs_n: log-log loss against non-embedding N with both fits and the saturating fit's
bootstrap band; isoflop: loss against total N per compute budget with each parabola;
n_opt: the IsoFLOP minima against C with the fitted N_opt = k C^a and the 20-tokens rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model import scaling
from tasks.io import atomic_path, write_text


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6, 4.2))


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def loss_vs_n(ln: dict, points: list[dict], names: list[str], out: Path) -> list[Path]:
    sweep = [p for p in points if p["name"] in names]
    x = np.array([p["params_non_embedding"] for p in sweep], dtype=float)
    y = np.array([p["val_loss"] for p in sweep], dtype=float)
    grid = np.geomspace(x.min() / 1.5, x.max() * 3, 60)
    pure, sat = (scaling.PowerLaw(**_law(ln[k])) for k in ("pure", "saturating"))
    lo, hi = scaling.band(ln["_saturating_samples"], grid)
    rows = [
        f"{n:.6g},{pure.predict(n):.6f},{sat.predict(n):.6f},{a:.6f},{b:.6f}"
        for n, a, b in zip(grid, lo, hi, strict=True)
    ]
    write_text(out / "fit.csv", "params_non_embedding,pure,saturating,lo,hi\n" + "\n".join(rows))
    plt, fig, ax = _figure()
    ax.fill_between(grid, lo, hi, alpha=0.25, label="saturating fit, 95% band")
    ax.plot(grid, sat.predict(grid), label=f"E + A/N^α, α={sat.alpha:.3f}, E={sat.E:.2f}")
    ax.plot(grid, pure.predict(grid), "--", label=f"(N_c/N)^α, α={pure.alpha:.3f}")
    ax.scatter(x, y, color="k", zorder=3, label=f"sweep ({sweep[0]['tokens']:,} tokens each)")
    ax.set(xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="val loss")
    ax.legend(fontsize=8)
    return [out / "fit.csv", _save(plt, fig, out / "loss_vs_n.png")]


def _law(d: dict) -> dict:
    return {k: d[k] for k in ("alpha", "scale", "E")}


def isoflop(iso: dict, points: list[dict], out: Path) -> list[Path]:
    budgets = sorted({p["budget_flops"] for p in points if p["budget_flops"] is not None})
    rows = [
        f"{p['budget_flops']:.3g},{p['params']},{p['tokens']},{p['val_loss']:.6f}"
        for c in budgets
        for p in sorted(points, key=lambda p: p["params"])
        if p["budget_flops"] == c
    ]
    write_text(out / "isoflop.csv", "flops,params,tokens,val_loss\n" + "\n".join(rows) + "\n")
    plt, fig, ax = _figure()
    for c in budgets:
        pts = sorted((p["params"], p["val_loss"]) for p in points if p["budget_flops"] == c)
        n, loss = np.array(pts).T
        (line,) = ax.plot(n, loss, "o", label=f"C = {c:.1e}")
        m = next((m for m in iso.get("minima", []) if m["flops"] == c), None)
        if m:
            g = np.geomspace(n.min(), n.max(), 50)
            ax.plot(g, np.polyval(m["coef"], np.log(g)), color=line.get_color())
            ax.plot(m["n_opt"], m["loss_opt"], "*", ms=12, color=line.get_color())
    ax.set(xscale="log", xlabel="total parameters N", ylabel="val loss", title="IsoFLOP")
    ax.legend(fontsize=8)
    return [out / "isoflop.csv", _save(plt, fig, out / "isoflop.png")]


def n_opt(iso: dict, out: Path) -> list[Path]:
    c = np.array([m["flops"] for m in iso["minima"]])
    n = np.array([m["n_opt"] for m in iso["minima"]])
    grid = np.geomspace(c.min() / 2, c.max() * 2, 30)
    plt, fig, ax = _figure()
    ax.plot(c, n, "o", label="IsoFLOP minima")
    ax.plot(grid, iso["k"] * grid ** iso["a"], label=f"N_opt = k C^{iso['a']:.2f}")
    ax.plot(grid, np.sqrt(grid / 120), ":", label="20 tokens/param: sqrt(C/120)")
    ax.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel="N_opt")
    ax.legend(fontsize=8)
    return [_save(plt, fig, out / "n_opt.png")]


def write_all(results: dict, points: list[dict], out: Path) -> list[Path]:
    """Every figure the results allow; returns the written paths."""
    paths = []
    if "pure" in results["L_N"]:
        paths += loss_vs_n(results["L_N"], points, results["size_sweep"], out)
    paths += isoflop(results["isoflop"], points, out)
    if "a" in results["isoflop"]:
        paths += n_opt(results["isoflop"], out)
    return paths
