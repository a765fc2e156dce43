"""Closure of the whole method on synthetic truth, through the real replica ensemble (CI size).

24 synthetic sample spectra (4 groups = seeds, 6 samples each: band gaps stratified in 1.0-2.5 eV, exponents 0.5 and
1.5, t/lambda 0.3-1.0, thickness-broadened ZLP, 6e7 counts as the real WS2 specimen-4 spectra, read noise) + 2 vacuum
spectra per group: align, dE1/dE2 with the vacuum as reference, one ZLPEnsemble per group (50 replicas x 600 steps
here, 100 x 1000 in `benchmarks/closure.py`), ZLP replicas via `predict_for`, inelastic = counts - ZLP,
`fit_band_gap(..., resolution=ZLP replicas)`. The code lives in `benchmarks/closure.py` (`run_closure`).

The claims: median |E_bg error| < 0.05 eV and the 68% intervals cover the truth in 55-80% of the spectra. They do not
hold yet at 0.45 eV resolution (see the reason on the xfail marks and the figures printed by the first test); the
marks are strict, so the tests turn red the day the claims hold and the marks must go.
"""
import json, sys, time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from closure import run_closure  # noqa: E402

SEEDS = (1, 2, 3, 4)
N_SAMPLES = 6

CLAIMS_FAIL = (
    "At 0.45 eV resolution the ensemble's ZLP extrapolation above dE1 is uncertain by 5-35% at the gap; indirect "
    "(b = 1.5) onsets stay below that until ~0.3-0.9 eV above the gap, `fit_band_gap` finds the onset there and its "
    "window starts only 0.15-0.45 eV below it (fits whose gap lands on the window's low edge are dropped), so E_bg is "
    "biased high with intervals that miss the truth. Measured here: median |error| ~0.1-0.3 eV, coverage ~0.3-0.5. "
    "See benchmarks/closure.py and the lead's notes for the figures by exponent, gap and thickness.")


@pytest.fixture(scope="module")
def closure():
    import warnings
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_closure(seeds=SEEDS, n_samples=N_SAMPLES, n_replicas=50, max_epochs=600, preset="specimen4",
                          excitons="none")
    res["wall_s"] = time.perf_counter() - t0
    return res


def test_closure_runs_and_counts_every_spectrum(closure):
    "The pipeline runs end to end on >= 20 spectra; every spectrum is either fitted or counted as a failure."
    f, r = closure["figures"], closure["records"]
    print(json.dumps({k: f[k] for k in ("n_spectra", "band_gap", "exponent", "failures", "by_exponent", "ensemble")}))
    print(f"closure wall time {closure['wall_s']:.1f} s (training {f['train_s']:.1f} s)")
    assert f["n_spectra"] == len(SEEDS) * N_SAMPLES >= 20
    assert set(np.unique(r["exponent"])) == {0.5, 1.5} and len(np.unique(r["t_over_lambda"])) >= 3
    assert r["band_gap"].min() >= 1.0 and r["band_gap"].max() <= 2.5
    valid = r["n_valid"] > 0
    # a fitted spectrum has finite summaries; one without any valid replica is counted, never a silent NaN
    assert np.all(np.isfinite(r["gap_median"][valid])) and np.all(np.isnan(r["gap_median"][~valid]))
    assert f["failures"]["spectra_without_valid_fit"] == f["band_gap"]["failed"] == int(np.sum(~valid))
    assert np.all(r["gap_low"][valid] <= r["gap_median"][valid]) and np.all(r["gap_median"][valid] <= r["gap_high"][valid])
    assert 0 <= f["band_gap"]["coverage"] <= 1 and 0 <= f["failures"]["replica_fits_failed_fraction"] < 1
    assert np.all(r["dE1"] < r["dE2"])
    # the ensemble trained: chi^2/N far below that of the initial networks (~1e6 on these spectra)
    assert max(f["ensemble"]["chi2_valid_median"]) < 1e3


@pytest.mark.xfail(strict=True, reason=CLAIMS_FAIL)
def test_closure_median_error_below_50meV(closure):
    f = closure["figures"]["band_gap"]
    assert f["median_abs_error"] is not None and f["median_abs_error"] < 0.05, f


@pytest.mark.xfail(strict=True, reason=CLAIMS_FAIL)
def test_closure_coverage_of_68pct_intervals(closure):
    f = closure["figures"]["band_gap"]
    assert 0.55 <= f["coverage"] <= 0.80, f
