"""Closure of the whole method on synthetic truth, through the real replica ensemble (CI size).

21 synthetic sample spectra (3 groups = seeds, 7 samples each: band gaps stratified in 1.0-2.5 eV, exponents 0.5 and
1.5, t/lambda 0.3-1.0, thickness-broadened ZLP, read noise) + 2 vacuum spectra per group, each group through
`eelsnb.analysis.analyse_spectra(calibrate=True)` itself, as `eelsnb spectra --calibrate` runs it (50 replicas x 600
steps here, 100 x 1000 in `benchmarks/closure.py --pipeline --calibrate`): one alignment, dE1/dE2 with the vacuum as
reference, one ZLPEnsemble on vacuum (up to where it sinks to 10x its noise) and samples (up to their dE1), the spread
calibration on the vacuum counts held out beyond (`eelsnb.subtract.calibrate_spread`), the ZLP replicas' ln-space
deviation from their median scaled by it (`scale_spread`), the band gap fitted with its defaults and `spread_scale=`
the factor: the raw fit, only the replicas' scatter calibrated. The raw intervals of the same ensemble are kept beside
(`band_gap_raw`). The harness is `benchmarks/closure.py` (`run_closure(calibrate=True, pipeline=True)`).

The preset is the monochromated one (`specimen3`: 0.08 eV ZLP, 5 meV channels), the instrument one uses for gaps near
1 eV. At the non-monochromated 0.45 eV (`specimen4`) the ZLP ensemble's uncertainty at the gap puts indirect gaps
0.1-0.5 eV too high, and a median |error| < 0.05 eV is out of reach; those figures come from
`python benchmarks/closure.py --preset specimen4 --pipeline` and are reported in 09_analysis, not asserted here.
"""
import json, math, sys, time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from closure import run_closure  # noqa: E402

SEEDS = (1, 2, 3)
N_SAMPLES = 7     # 21 spectra; 3 trainings of 50 replicas x 600 steps (~100 s of one core)
PRESET = "specimen3"

@pytest.fixture(scope="module")
def closure():
    import warnings
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_closure(seeds=SEEDS, n_samples=N_SAMPLES, n_replicas=50, max_epochs=600, preset=PRESET,
                          excitons="none", calibrate=True, pipeline=True)
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


def binomial_p(k:int, n:int, p:float=0.6827)->float:
    "Two-sided exact binomial p-value of k successes in n trials (outcomes no more likely than k's)."
    pr = [math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(n + 1)]
    return float(sum(x for x in pr if x <= pr[k] * (1 + 1e-9)))


def test_closure_intervals_cover_68pct(closure):
    """The calibrated 68% intervals cover the truth as often as 68% intervals should: the number covered is consistent
    with binomial(n, 0.6827) (two-sided p > 0.05; for 21 spectra, 10-18 covered). The issue's 55-80% is a statement
    about the rate, whose sampling sd over 21 spectra is 0.10: it is measured by the full-size benchmark
    (`python benchmarks/closure.py --preset specimen3 --groups 12 --pipeline --calibrate`: 0.78 of 72 spectra; 0.75 of
    72 with `--thicknesses 0.1 0.15 0.2 0.25 0.3 0.12`), not asserted on 21. Per exponent (9-12 spectra each) at least
    45% (fewer happens 5% / 12% of the time at a true 68%)."""
    f = closure["figures"]
    n, k = f["band_gap"]["n"], round(f["band_gap"]["coverage"] * f["band_gap"]["n"])
    print(json.dumps({k_: f[k_] for k_ in ("band_gap", "band_gap_raw")}), "binomial p", binomial_p(k, n))
    assert binomial_p(k, n) > 0.05, (k, n, f["band_gap"])
    for b, fb in f["by_exponent"].items(): assert fb["band_gap"]["coverage"] >= 0.45, (b, fb)


def test_raw_intervals_over_cover(closure):
    """Why the calibration exists: with the raw spread the same replicas' intervals cover more than 68% intervals can
    (binomial p < 0.05; 1.00 here, and over 72 thick and 72 thin spectra at 100 x 1000). `analyse_spectra` keeps the raw
    spread unless calibrate=True (09_analysis, 'Calibrated intervals')."""
    f = closure["figures"]["band_gap_raw"]
    k = round(f["coverage"] * f["n"])
    assert f["coverage"] > 0.6827 and binomial_p(k, f["n"]) < 0.05, f


def test_calibration_keeps_the_fit(closure):
    """The calibration changes the intervals much more than the estimate: the median |error| stays under 0.05 eV and within
    1.5x the raw fit's (1.18x here; at 100 x 1000 0.74x on thin and 1.4x on thick samples: moving the replicas towards
    their median moves the median of their band gaps a little), while the intervals narrow."""
    f = closure["figures"]
    assert f["band_gap"]["median_abs_error"] < 0.05, f["band_gap"]
    assert f["band_gap"]["median_abs_error"] <= 1.5 * f["band_gap_raw"]["median_abs_error"], (f["band_gap"], f["band_gap_raw"])
    assert f["band_gap"]["median_width"] < f["band_gap_raw"]["median_width"]


def test_spread_calibration_matches_the_truth(closure):
    """The factor found on the held-out vacuum counts is below 1 (the raw ZLP band is too wide) and close to the one the
    samples' own true ZLPs between dE1 and dE2 ask for (known only here): within 2x per group (0.69-0.98x here; at
    100 x 1000 within 1.5x in 11 of 12 thin and 6 of 10 thick groups, within 2x in all but one, 0.38x: the vacuum is a
    proxy). The scaled ZLP band is calibrated where it matters: median |median ZLP - true ZLP| / half 68% spread at the
    gap 0.4-1.1 (0.67 for a Gaussian; 0.68 here, 0.74 thin / 0.81 thick at 100 x 1000)."""
    c = closure["figures"]["calibration"]
    print(json.dumps(c))
    for k, o in zip(c["scale"], c["oracle"]):
        assert 0 < k < 0.8 and 0.5 < k / o < 2, c
    assert c["applied"] == c["scale"]
    assert 0.4 <= closure["figures"]["ensemble"]["zlp_abs_pull_gap_median"] <= 1.1, closure["figures"]["ensemble"]


def test_pipeline_mode_runs_the_product_and_reuses_its_model(tmp_path):
    """`closure.py --pipeline` runs `analyse_spectra` itself (its defaults: the vacuum trained up to where it sinks to 10x
    its noise, not the lowest sample dE1; calibrate='auto') and scores it against the truth; with a cache the saved model is loaded and gives
    the same record without training. Tiny ensemble: this checks the harness, not the closure figures."""
    import warnings
    from closure import analyse_group_pipeline, make_group, figures
    g = make_group(2, 3, preset=PRESET)
    cache = tmp_path / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = analyse_group_pipeline(g, n_replicas=8, max_epochs=80, seed=2, cache=str(cache))
        r2 = analyse_group_pipeline(g, n_replicas=8, max_epochs=80, seed=2, cache=str(cache))
    assert (cache / "model.json").exists() and r1["train_s"] > 0 and r2["train_s"] == 0
    for k in ("gap_median", "gap_low", "gap_high", "b_median", "n_valid", "dE1"):
        np.testing.assert_array_equal(r1[k], r2[k], err_msg=k)
    assert len(r1["gap_median"]) == 3 and np.all(r1["n_replicas"] == 8)
    assert r1["vacuum_dE1"] > r1["dE1"].min(), (r1["vacuum_dE1"], r1["dE1"])   # the vacuum's tails, not held out
    # analyse_spectra's default calibrate='auto' calibrates at this 0.08 eV ZLP: the factor (or nan where the held-out
    # vacuum was too noisy) and the raw fit beside, the same from the saved model
    assert r1["spread_scale_applied"] == r2["spread_scale_applied"] and "gap_median_raw" in r1
    f = figures([r1])
    assert f["n_spectra"] == 3 and 0 <= f["band_gap"]["coverage"] <= 1 and "calibration" in f and "band_gap_raw" in f


def test_step_by_step_trains_the_vacuum_as_the_library(tmp_path):
    """`analyse_group` (the method taken apart, for experiments) trains the vacuum as `analyse_spectra` does: up to where
    it sinks to 10x its noise (`vacuum_window`), not only up to the lowest sample dE1; a cache trained the old way (the vacuum only up
    to the lowest sample dE1, closure.py of session 13 and older) is refused, not mixed in. Tiny ensemble."""
    import warnings
    from closure import analyse_group, make_group
    from eelsnb.analysis import vacuum_window, zlp_fwhm
    from eelsnb.preprocess import align_zlp
    g = make_group(2, 3, preset=PRESET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = analyse_group(g, n_replicas=8, max_epochs=80, seed=2, calibrate=True, cache=str(tmp_path / "g.npz"))
    vac, _ = align_zlp(g["vacuum"], g["energy"])
    vd1 = vacuum_window(vac, g["energy"], zlp_fwhm(vac, g["energy"]), r["dE2"])[0]
    assert r["vacuum_dE1"] == vd1 > r["dE1"].min(), (r["vacuum_dE1"], vd1, r["dE1"])   # not the old lowest dE1
    assert "gap_median_raw" in r and len(r["gap_median"]) == 3
    old = dict(np.load(tmp_path / "g.npz")); old.pop("vacuum_dE1")
    np.savez(tmp_path / "old.npz", **old)
    with pytest.raises(ValueError, match="lowest sample dE1"):
        analyse_group(g, n_replicas=8, max_epochs=80, seed=2, cache=str(tmp_path / "old.npz"))
