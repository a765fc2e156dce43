"""Closure of the whole method on synthetic truth, through the real replica ensemble (CI size).

21 synthetic sample spectra (3 groups = seeds, 7 samples each: band gaps stratified in 1.0-2.5 eV, exponents 0.5 and
1.5, t/lambda 0.3-1.0, thickness-broadened ZLP, read noise) + 2 vacuum spectra per group: align, dE1/dE2 with the
vacuum as reference, one ZLPEnsemble per group (50 replicas x 600 steps here, 100 x 1000 in `benchmarks/closure.py`),
ZLP replicas via `predict_for`, inelastic = counts - ZLP, `fit_band_gap(..., resolution=ZLP replicas)` with its
defaults (automatic onset window from the detected onset, edge fits kept). The code lives in `benchmarks/closure.py`
(`run_closure`), which also measures the spread calibration on the vacuum counts held out beyond the lowest sample
dE1 (`eelsnb.subtract.calibrate_spread`) without applying it.

The preset is the monochromated one (`specimen3`: 0.08 eV ZLP, 5 meV channels), the instrument one uses for gaps near
1 eV. At the non-monochromated 0.45 eV (`specimen4`) the ZLP ensemble's uncertainty at the gap (~12% of the ZLP,
~1.4x the inelastic signal 0.3 eV above a b = 1.5 gap) puts indirect gaps 0.3-0.5 eV too high, and a median
|error| < 0.05 eV is out of reach; those figures come from `python benchmarks/closure.py --preset specimen4` and are
reported in 07_bandgap, not asserted here.
"""
import json, sys, time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from closure import run_closure  # noqa: E402

SEEDS = (1, 2, 3)
N_SAMPLES = 7     # 21 spectra; 3 trainings of 50 replicas x 600 steps (~100 s of one core)
PRESET = "specimen3"

COVERAGE_ABOVE = (
    "Over-coverage: on the monochromated preset the 68% intervals are conservative (coverage 1.00 at this size and over "
    "36 spectra at 100 x 1000; median |error| ~0.012-0.014 eV against median widths of ~0.09-0.18 eV). The ZLP "
    "replicas' spread is 2-10x their median's error (the factor `calibrate_spread` finds on the held-out vacuum counts: "
    "0.26-0.39 here, 0.11-0.48 at 100 x 1000). Scaling the ZLP spread by it calibrates the ZLP band but not the band-gap "
    "intervals: at 100 x 1000 they then cover 0.33 (0.42 with the factor the true ZLPs ask for), and the median |error| "
    "rises to 0.018-0.03 eV, because the band gap's error holds more than the ZLP band (the fit's weights and window "
    "move with the spread; b = 1.5 gaps keep a 0.05-0.09 eV error the band does not carry). At this size the calibrated "
    "run happens to cover 0.67. Open: a calibration at the level of the band gap itself (09_analysis, 'Calibrated "
    "intervals').")


@pytest.fixture(scope="module")
def closure():
    import warnings
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_closure(seeds=SEEDS, n_samples=N_SAMPLES, n_replicas=50, max_epochs=600, preset=PRESET,
                          excitons="none", calibrate=False)
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


def test_closure_median_error_below_50meV(closure):
    "Median |E_bg error| over all spectra (a spectrum without a valid fit counts as an infinite error) < 0.05 eV."
    f = closure["figures"]["band_gap"]
    assert f["median_abs_error"] is not None and f["median_abs_error"] < 0.05, f
    for b, fb in closure["figures"]["by_exponent"].items():   # and for direct and indirect gaps alike
        assert fb["band_gap"]["median_abs_error"] is not None and fb["band_gap"]["median_abs_error"] < 0.1, (b, fb)


def test_closure_intervals_cover_at_least_55pct(closure):
    "The 68% intervals are not too narrow: they cover the truth in at least 55% of the spectra, per exponent too."
    f = closure["figures"]
    assert f["band_gap"]["coverage"] >= 0.55, f["band_gap"]
    for b, fb in f["by_exponent"].items(): assert fb["band_gap"]["coverage"] >= 0.55, (b, fb)


@pytest.mark.xfail(strict=True, reason=COVERAGE_ABOVE)
def test_closure_intervals_cover_at_most_80pct(closure):
    f = closure["figures"]["band_gap"]
    assert f["coverage"] <= 0.80, f


def test_zlp_spread_is_wider_than_its_error(closure):
    """Why the intervals over-cover, measured on data the ensemble did not see: the factor that makes the ZLP band cover
    the held-out vacuum counts 68% of the time is below 1 in every group, and so is the factor the samples' own true
    ZLPs between dE1 and dE2 ask for (known only here); |median ZLP - true ZLP| at the gap is well under the 0.67 half
    spreads of a calibrated band."""
    c, ens = closure["figures"]["calibration"], closure["figures"]["ensemble"]
    print(json.dumps(c), ens["zlp_abs_pull_gap_median"])
    assert c["applied"] == [1.0] * len(SEEDS)                  # measured, not applied
    assert all(0 < k < 0.8 for k in c["scale"]) and all(0 < k < 0.8 for k in c["oracle"]), c
    assert ens["zlp_abs_pull_gap_median"] < 0.4, ens
