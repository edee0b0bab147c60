"""Scaling-law fits: power laws in model size or data, IsoFLOP analysis, compute-optimal sizes.

Laws (x is parameters N or tokens D):
    pure:        L(x) = (x_c / x)^alpha              (Kaplan et al. 2020, eq. 1.1-1.2)
    saturating:  L(x) = E + A / x^alpha              (Hoffmann et al. 2022, one-variable form)
Both are fitted in log space (least squares on log L), so every point weighs the same whatever
its loss. Confidence intervals come from a residual bootstrap: refit on the fitted curve plus
resampled log-space residuals, which keeps the design (the sizes) fixed; a case bootstrap would
often draw fewer distinct sizes than parameters from a five-point sweep.

IsoFLOP (Hoffmann et al. 2022, approach 2): per compute budget C, loss against log N is a
parabola whose vertex is the loss-minimising N; N_opt = k C^a is then a line in log-log.
Pure numpy/scipy: no files, no plotting. Degenerate input raises ValueError with the reason.
Leaves out: the joint L(N, D) fit (approach 3), which needs a denser grid than a laptop sweep.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares

MIN_POINTS = 3  # a 2-point fit has no residual left to judge it by, for either law
ALPHA_MAX = 3.0  # the exponents of language-model laws are well below 1; 3 bounds the search


@dataclass(frozen=True)
class PowerLaw:
    """L(x) = E + (x_c / x)^alpha; E = 0 for the pure law. `scale` = x_c^alpha (= A)."""

    alpha: float
    scale: float
    E: float = 0.0
    rmse_log: float = 0.0  # root mean square residual of log L at the fitted points

    @property
    def x_c(self) -> float | None:
        """x_c = A^(1/alpha); None where that is no finite float (alpha near 0, say)."""
        if not (self.alpha > 0 and self.scale > 0):
            return None
        log_x_c = math.log(self.scale) / self.alpha
        return math.exp(log_x_c) if log_x_c < math.log(sys.float_info.max) else None

    def predict(self, x) -> np.ndarray:
        return self.E + self.scale * np.asarray(x, dtype=np.float64) ** -self.alpha

    def to_dict(self) -> dict:
        return asdict(self) | {"x_c": self.x_c}


# ---------------------------------------------------------------------------- input checks


def check_points(x, loss, what: str = "N", min_points: int = MIN_POINTS):
    """Arrays of sizes and losses, or a ValueError that says what is wrong with them."""
    x = np.asarray(x, dtype=np.float64).ravel()
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if x.shape != loss.shape:
        raise ValueError(f"{len(x)} values of {what} but {len(loss)} losses")
    if len(x) < min_points:
        raise ValueError(
            f"a scaling fit needs at least {min_points} points, got {len(x)} ({what}={x.tolist()})"
        )
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError(f"{what} must be positive and finite, got {x.tolist()}")
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise ValueError(f"losses must be positive and finite (log space), got {loss.tolist()}")
    if len(np.unique(x)) < min_points:
        raise ValueError(f"need at least {min_points} distinct values of {what}, got {x.tolist()}")
    return x, loss


# ---------------------------------------------------------------------------- fits


def fit_power_law(x, loss, what: str = "N") -> PowerLaw:
    """L = (x_c / x)^alpha: a straight line log L = log A - alpha log x."""
    x, loss = check_points(x, loss, what)
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    law = PowerLaw(alpha=float(-slope), scale=float(math.exp(intercept)))
    return _with_rmse(law, x, loss)


def fit_saturating(x, loss, what: str = "N") -> PowerLaw:
    """L = E + A / x^alpha, least squares on log L with 0 <= E < min(L), 0 < alpha <= 3."""
    x, loss = check_points(x, loss, what)
    x_ref = float(np.exp(np.mean(np.log(x))))  # fit in x / x_ref, so A is O(loss)
    u = x / x_ref
    alpha0, E0, A0 = _grid_start(u, loss)
    E_max = float(loss.min()) * (1 - 1e-9)

    def residuals(theta):
        log_a, alpha, E = theta
        return np.log(E + np.exp(log_a) * u**-alpha) - np.log(loss)

    lower, upper = [-50.0, 1e-6, 0.0], [50.0, ALPHA_MAX, E_max]
    start = np.clip([math.log(A0), alpha0, E0], np.add(lower, 1e-9), np.subtract(upper, 1e-9))
    sol = least_squares(residuals, start, bounds=(lower, upper), x_scale="jac")
    log_a, alpha, E = (float(v) for v in sol.x)
    law = PowerLaw(alpha=alpha, scale=math.exp(log_a) * x_ref**alpha, E=E)
    return _with_rmse(law, x, loss)


def _grid_start(u: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Best (alpha, E, A) over an alpha grid, E and A by linear least squares on L."""
    best = (math.inf, 0.5, 0.0, float(loss.mean()))
    for alpha in np.geomspace(0.01, ALPHA_MAX, 60):
        design = np.stack([np.ones_like(u), u**-alpha], axis=1)
        (E, A), *_ = np.linalg.lstsq(design, loss, rcond=None)
        E = float(np.clip(E, 0.0, loss.min() * 0.999))
        A = max(float(A), 1e-12)
        err = float(np.sum((np.log(E + A * u**-alpha) - np.log(loss)) ** 2))
        if err < best[0]:
            best = (err, float(alpha), E, A)
    return best[1], best[2], best[3]


def _with_rmse(law: PowerLaw, x: np.ndarray, loss: np.ndarray) -> PowerLaw:
    resid = np.log(law.predict(x)) - np.log(loss)
    return PowerLaw(law.alpha, law.scale, law.E, float(np.sqrt(np.mean(resid**2))))


FITS = {"pure": fit_power_law, "saturating": fit_saturating}


def bootstrap(
    x, loss, kind: str = "pure", n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> dict:
    """Residual bootstrap of a fit: the law, percentile CIs of alpha and E, and the refits.

    Returns {"law", "alpha_ci", "E_ci", "samples"} where samples is a list of PowerLaw.
    """
    if kind not in FITS:
        raise ValueError(f"unknown law {kind!r}; expected one of {sorted(FITS)}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 10:
        raise ValueError(f"n_boot must be at least 10 for a percentile interval, got {n_boot}")
    fit = FITS[kind]
    x, loss = check_points(x, loss)
    law = fit(x, loss)
    log_fit = np.log(law.predict(x))
    resid = np.log(loss) - log_fit
    resid = resid - resid.mean()
    rng = np.random.default_rng(seed)
    samples = [
        fit(x, np.exp(log_fit + rng.choice(resid, size=len(x), replace=True)))
        for _ in range(n_boot)
    ]
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    alphas = np.array([s.alpha for s in samples])
    Es = np.array([s.E for s in samples])
    return {
        "law": law,
        "alpha_ci": [float(v) for v in np.percentile(alphas, q)],
        "E_ci": [float(v) for v in np.percentile(Es, q)],
        "samples": samples,
    }


def band(samples: list[PowerLaw], x, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of the bootstrap refits' predictions at `x`."""
    preds = np.stack([s.predict(x) for s in samples])
    lo, hi = np.percentile(preds, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2], axis=0)
    return lo, hi


def holdout_error(x, loss, kind: str = "saturating") -> dict:
    """Fit on all points but the largest x, predict the largest; relative error of the loss."""
    x, loss = check_points(x, loss, min_points=MIN_POINTS + 1)
    order = np.argsort(x)
    x, loss = x[order], loss[order]
    law = FITS[kind](x[:-1], loss[:-1])
    predicted = float(law.predict(x[-1]))
    return {
        "x": float(x[-1]),
        "actual": float(loss[-1]),
        "predicted": predicted,
        "rel_error": abs(predicted - float(loss[-1])) / float(loss[-1]),
        "law": law.to_dict(),
    }


# ---------------------------------------------------------------------------- IsoFLOP


def isoflop_minimum(n, loss) -> dict:
    """Vertex of the parabola L = a (ln N)^2 + b ln N + c through one budget's points."""
    n, loss = check_points(n, loss, "N")
    log_n = np.log(n)
    a, b, c = np.polyfit(log_n, loss, 2)
    if a <= 0:
        raise ValueError(
            f"IsoFLOP points N={n.tolist()} have no interior loss minimum (parabola opens "
            "downward); add sizes on both sides of the best one"
        )
    log_opt = -b / (2 * a)
    return {
        "n_opt": float(math.exp(log_opt)),
        "loss_opt": float(c - b * b / (4 * a)),
        "coef": [float(a), float(b), float(c)],
        "inside": bool(log_n.min() <= log_opt <= log_n.max()),  # else it is an extrapolation
    }


def fit_isoflop(budgets: dict[float, tuple]) -> dict:
    """Per budget C -> (N list, loss list): minima, then N_opt = k C^a and D_opt = C / (6 N_opt).

    Returns {"minima": [{flops, n_opt, d_opt, loss_opt, inside}], "a", "k", "b"} where
    D_opt ∝ C^b with b = 1 - a.
    """
    if len(budgets) < 2:
        raise ValueError(
            f"fitting N_opt ∝ C^a needs at least 2 compute budgets, got {len(budgets)}"
        )
    minima = []
    for flops in sorted(budgets):
        if not (math.isfinite(flops) and flops > 0):
            raise ValueError(f"compute budget must be positive and finite, got {flops}")
        m = isoflop_minimum(*budgets[flops])
        minima.append({"flops": float(flops), "d_opt": flops / (6 * m["n_opt"])} | m)
    c = np.log([m["flops"] for m in minima])
    slope, intercept = np.polyfit(c, np.log([m["n_opt"] for m in minima]), 1)
    return {"minima": minima, "a": float(slope), "k": float(math.exp(intercept)), "b": 1 - slope}


# ---------------------------------------------------------------------------- compute-optimal


def compute_optimal(flops: float, tokens_per_param: float = 20.0) -> dict:
    """N and D for a budget by the fixed-ratio rule: D = r N and C = 6 N D, so N = sqrt(C/(6r)).

    With r = 20 (Chinchilla), N = sqrt(C / 120): not sqrt(C / 6), which would give D = N.
    """
    if not (math.isfinite(flops) and flops > 0):
        raise ValueError(f"compute budget must be positive and finite, got {flops}")
    if not (math.isfinite(tokens_per_param) and tokens_per_param > 0):
        raise ValueError(f"tokens_per_param must be positive, got {tokens_per_param}")
    n = math.sqrt(flops / (6.0 * tokens_per_param))
    return {"flops": float(flops), "n": n, "d": tokens_per_param * n}


def compute_optimal_fitted(flops: float, a: float, k: float) -> dict:
    """N and D for a budget by a fitted N_opt = k C^a, with D = C / (6 N)."""
    if not (math.isfinite(flops) and flops > 0):
        raise ValueError(f"compute budget must be positive and finite, got {flops}")
    if not (math.isfinite(a) and math.isfinite(k) and k > 0):
        raise ValueError(f"fitted law N_opt = k C^a needs finite a and k > 0, got a={a}, k={k}")
    n = k * flops**a
    return {"flops": float(flops), "n": n, "d": flops / (6.0 * n)}
