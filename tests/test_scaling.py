"""Scaling laws: fits on synthetic data with known exponents, degenerate input, IsoFLOP,
compute-optimal sizes; then (slow) the DVC sweep on the quick profile and the Prefect sweep flow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from model import scaling

N = np.geomspace(1e4, 1e7, 10)


def noisy(loss: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Multiplicative (log-space) noise, as a run-to-run seed spread would give."""
    return loss * np.exp(np.random.default_rng(seed).normal(0, sigma, size=loss.shape))


# ---------------------------------------------------------------------------- fits


def test_pure_law_recovers_kaplan_exponent_under_noise():
    truth = scaling.PowerLaw(alpha=0.076, scale=(8.8e13) ** 0.076)  # Kaplan's N_c and alpha_N
    law = scaling.fit_power_law(N, noisy(truth.predict(N), 0.005))
    assert law.alpha == pytest.approx(0.076, abs=0.005)
    assert law.x_c == pytest.approx(8.8e13, rel=0.5)  # N_c is an extrapolation: loose


def test_saturating_law_recovers_exponent_and_floor():
    truth = scaling.PowerLaw(alpha=0.34, scale=406.4, E=1.69)  # Chinchilla's N term
    law = scaling.fit_saturating(N, noisy(truth.predict(N), 0.003, seed=1))
    assert law.alpha == pytest.approx(0.34, abs=0.05)
    assert abs(law.E - 1.69) < 0.15
    assert law.rmse_log < 0.01


def test_saturating_fit_is_exact_on_clean_data():
    truth = scaling.PowerLaw(alpha=0.5, scale=300.0, E=2.0)
    law = scaling.fit_saturating(N[:5], truth.predict(N[:5]))
    np.testing.assert_allclose(law.predict(N), truth.predict(N), rtol=1e-5)


@pytest.mark.parametrize("kind", ["pure", "saturating"])
def test_bootstrap_interval_contains_truth(kind):
    truth = scaling.PowerLaw(alpha=0.3, scale=50.0, E=2.0 if kind == "saturating" else 0.0)
    loss = noisy(truth.predict(N), 0.01, seed=2)
    boot = scaling.bootstrap(N, loss, kind=kind, n_boot=200, seed=0)
    lo, hi = boot["alpha_ci"]
    assert lo < 0.3 < hi
    assert lo <= boot["law"].alpha <= hi
    assert hi - lo < 0.3  # informative, not the whole search range
    band_lo, band_hi = scaling.band(boot["samples"], N)
    assert np.all(band_lo <= band_hi)
    assert np.mean((band_lo <= loss) & (loss <= band_hi)) > 0.3


def test_holdout_predicts_largest_point():
    truth = scaling.PowerLaw(alpha=0.3, scale=50.0, E=2.0)
    out = scaling.holdout_error(N[:6], noisy(truth.predict(N[:6]), 0.002, seed=3))
    assert out["x"] == N[5]
    assert out["rel_error"] < 0.01


@pytest.mark.parametrize(
    ("x", "loss", "message"),
    [
        ([1e4, 1e5], [3.0, 2.5], "at least 3 points"),
        ([1e4, 1e5, 1e6], [3.0, 0.0, 2.0], "positive and finite"),
        ([1e4, 1e5, 1e6], [3.0, float("nan"), 2.0], "positive and finite"),
        ([1e4, 1e5, 1e6], [3.0, -1.0, 2.0], "positive and finite"),
        ([1e4, 0, 1e6], [3.0, 2.5, 2.0], "N must be positive"),
        ([-1e4, 1e5, 1e6], [3.0, 2.5, 2.0], "N must be positive"),
        ([1e4, 1e4, 1e5], [3.0, 2.9, 2.5], "distinct"),
        ([1e4, 1e5, 1e6], [3.0, 2.5], "3 values of N but 2 losses"),
    ],
)
@pytest.mark.parametrize("fit", [scaling.fit_power_law, scaling.fit_saturating])
def test_degenerate_input_is_a_clear_error(fit, x, loss, message):
    with pytest.raises(ValueError, match=message):
        fit(x, loss)


def test_holdout_needs_four_points_and_bootstrap_checks_arguments():
    with pytest.raises(ValueError, match="at least 4 points"):
        scaling.holdout_error([1e4, 1e5, 1e6], [3.0, 2.5, 2.2])
    with pytest.raises(ValueError, match="unknown law"):
        scaling.bootstrap(N, np.ones_like(N), kind="cubic")


# ---------------------------------------------------------------------------- IsoFLOP


def isoflop_losses(n: np.ndarray, flops: float) -> np.ndarray:
    """Chinchilla's fitted L(N, D) at D = C / (6N): a known loss-minimising N per budget."""
    d = flops / (6 * n)
    return 1.69 + 406.4 / n**0.34 + 410.7 / d**0.28


def n_opt_chinchilla(flops: float) -> float:
    """Analytic minimiser of that loss: G (C/6)^(beta/(alpha+beta)) (Hoffmann et al. eq. 4)."""
    g = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
    return g * (flops / 6) ** (0.28 / 0.62)


def test_isoflop_finds_known_minimum():
    # a parabola in ln N with its vertex at N = 3e6
    n = np.geomspace(1e6, 1e7, 5)
    loss = 3.0 + 0.2 * (np.log(n) - math.log(3e6)) ** 2
    m = scaling.isoflop_minimum(n, loss)
    assert m["n_opt"] == pytest.approx(3e6, rel=1e-6)
    assert m["loss_opt"] == pytest.approx(3.0)
    assert m["inside"]


def test_isoflop_exponent_matches_chinchilla_law():
    budgets = {}
    for flops in (1e18, 1e19, 1e20, 1e21):
        n = n_opt_chinchilla(flops) * np.geomspace(0.25, 4.0, 9)  # a grid around the optimum
        budgets[flops] = (n, isoflop_losses(n, flops))
    out = scaling.fit_isoflop(budgets)
    # analytic: N_opt ∝ C^(beta / (alpha + beta)) = C^(0.28 / 0.62) = C^0.452
    assert out["a"] == pytest.approx(0.28 / 0.62, abs=0.03)
    assert out["b"] == pytest.approx(1 - out["a"])
    assert all(m["inside"] for m in out["minima"])
    for m in out["minima"]:  # the parabola is an approximation: within 10% of the analytic
        assert m["n_opt"] == pytest.approx(n_opt_chinchilla(m["flops"]), rel=0.1)
    assert all(m["d_opt"] * m["n_opt"] * 6 == pytest.approx(m["flops"]) for m in out["minima"])


def test_isoflop_without_interior_minimum_is_an_error():
    with pytest.raises(ValueError, match="no interior loss minimum"):
        scaling.isoflop_minimum([1e5, 1e6, 1e7], [3.0, 3.5, 3.6])
    with pytest.raises(ValueError, match="at least 2 compute budgets"):
        scaling.fit_isoflop({1e18: ([1e5, 1e6, 1e7], [3.0, 2.0, 3.0])})


# ---------------------------------------------------------------------------- compute-optimal


@pytest.mark.parametrize("flops", [1e15, 5.76e23, 1e25])
def test_compute_optimal_honours_twenty_tokens_per_parameter(flops):
    out = scaling.compute_optimal(flops)
    assert out["d"] / out["n"] == pytest.approx(20.0)
    assert 6 * out["n"] * out["d"] == pytest.approx(flops)
    assert out["n"] == pytest.approx(math.sqrt(flops / 120))
    assert out["n"] != pytest.approx(math.sqrt(flops / 6))


def test_compute_optimal_matches_chinchilla_size():
    # Chinchilla: 70B parameters, 1.4T tokens, about 5.76e23 FLOPs
    out = scaling.compute_optimal(5.76e23)
    assert out["n"] == pytest.approx(70e9, rel=0.05)
    assert out["d"] == pytest.approx(1.4e12, rel=0.05)


def test_compute_optimal_by_fitted_law_spends_the_budget():
    out = scaling.compute_optimal_fitted(1e20, a=0.5, k=0.09)
    assert out["n"] == pytest.approx(0.09 * 1e10)
    assert 6 * out["n"] * out["d"] == pytest.approx(1e20)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="compute budget"):
            scaling.compute_optimal(bad)


def test_law_with_a_tiny_exponent_has_no_finite_x_c_but_still_serialises():
    flat = scaling.PowerLaw(alpha=1e-3, scale=7.0)  # x_c = 7^1000 overflows a float
    assert flat.x_c is None and flat.to_dict()["x_c"] is None
    assert scaling.PowerLaw(alpha=0.5, scale=10.0).x_c == pytest.approx(100.0)
    assert flat.predict([10.0])[0] == pytest.approx(7.0 * 10.0**-1e-3)
