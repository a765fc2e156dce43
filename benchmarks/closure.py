#!/usr/bin/env python
"""Closure test of the whole method on synthetic truth, through the real replica ensemble (no emulated replicas).

For each group (one seed): vacuum spectra and sample spectra from `eelsnb.synthetic.synthetic_spectra` with known band
gap E_bg (drawn stratified in `gap_range`), onset exponent b (0.5 and 1.5) and thickness t/lambda (one sample per
thickness), a thickness-broadened specimen ZLP (`zlp_broadening`), Poisson counts plus read noise and sub-channel drift.
Then the method, step by step, as a user runs it:

1. ZLP alignment (`eelsnb.preprocess.align_zlp`) of vacuum and samples;
2. training window dE1/dE2 per sample (`find_dE1_dE2`, the vacuum mean as reference); the vacuum spectra are trained
   up to where they sink to 10x their noise (`eelsnb.analysis.vacuum_window`, as `analyse_spectra` does; until
   session 13 here only up to the lowest sample dE1), their pseudo-data start at the median sample dE2;
3. one `ZLPEnsemble` trained on vacuum + samples (`training_set_from_spectra` + `fit`), outlier replicas dropped;
4. the spread calibration (`eelsnb.subtract.calibrate_spread`, as `analyse_spectra(calibrate=True)` does): the
   ensemble's ZLP replicas of the vacuum spectra against their own counts beyond the vacuum's training window (held
   out) give a factor on the replicas' spread, reported beside the factor the samples' true ZLPs ask for; with
   `--calibrate` every ZLP replica's ln-space deviation from the replicas' median is scaled by it (`scale_spread`) and
   the band gap is fitted with `spread_scale=` it (the raw fit, only the replicas' scatter changes); the raw figures
   are kept beside (`band_gap_raw`);
5. ZLP replicas of every sample at its own conditions (`ZLPEnsemble.predict_for`), inelastic = counts - ZLP;
   `eelsnb.bandgap.fit_band_gap(inelastic, energy, resolution=ZLP replicas, seed=...)` with its defaults;
6. the median and 68% interval (16-84%) of E_bg and b over replicas, against the truth.

A sample without any valid replica fit counts as a failure: not covered, and its error counts as infinite in the
median |error| (`median_abs_error`); `median_abs_error_valid` is taken over the valid samples only.

Prints one JSON line: n_spectra, median |error| of E_bg and b, coverage of the 68% intervals, failures, breakdown by
exponent, band gap and thickness, ensemble figures and run times.

Usage: python benchmarks/closure.py [--quick] [--groups 6] [--replicas 100] [--epochs 1000] [--preset specimen4]
       [--excitons none|ws2] [--dose 6e7] [--threads 2] [--twins] [--cache DIR] [--calibrate]
       [--fwhm 0.15] [--thicknesses 0.1 0.2 0.3] [--pipeline] [--no-calibrate]

--pipeline runs `eelsnb.analysis.analyse_spectra` itself on each group, with its defaults (the vacuum trained up to where it
sinks to 10x its noise, errors from the vacuum spectra's spread, the spread calibrated where the vacuum ZLP FWHM is 0.1 eV
or less) or with --calibrate / --no-calibrate, as `eelsnb spectra` runs them: the figures of what a user gets, where the
steps above are the method taken apart for experiments.

--twins also trains, per group, two ensembles on the same data replicas with different initial weights and reports
(key `twins`) the network-to-network share of the band-gap spread and the coverage an interval would have without it.
"""
from __future__ import annotations
import argparse, json, os, platform, sys, time, warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))

# Acquisition presets: the two real WS2 data sets of the project (axis, resolution, dose of one spectrum).
PRESETS = {
    "specimen4": dict(kind="specimen4", fwhm=0.45, total_counts=6e7),   # non-monochromated, 25 meV channels, ~6e7 counts
    "specimen3": dict(kind="specimen3", fwhm=0.08, total_counts=1e8),   # monochromated, 5 meV channels, ~1e8 counts
}
EXCITONS = {"none": (), "ws2": ((2.0, 0.15, 0.6), (2.4, 0.2, 0.4))}
THICKNESSES = (0.3, 0.45, 0.6, 0.75, 0.9, 1.0)
GAP_BINS = ((1.0, 1.5), (1.5, 2.0), (2.0, 2.5))


def make_group(seed:int, # seed of this group: truth and noise
               n_samples:int=6, # sample spectra (one per thickness of `thicknesses`, cycled)
               n_vacuum:int=2, # vacuum spectra
               preset:str="specimen4", # acquisition: energy axis, ZLP FWHM, dose (see PRESETS)
               total_counts:float|None=None, # electrons per spectrum; None: the preset's
               excitons:str="none", # 'none' (clean onset) or 'ws2' (WS2 A/B excitons at 2.0/2.4 eV)
               zlp_broadening:float=0.3, # specimen ZLP: FWHM (1 + k t/lambda); the real WS2 samples need ~0.3
               read_noise:float=2.0, # Gaussian read noise (counts rms)
               thicknesses=THICKNESSES, # t/lambda values
               gap_range=(1.0, 2.5), # band gaps drawn stratified in this range (eV)
               fwhm:float|None=None, # ZLP FWHM (eV); None: the preset's
               exponents=(0.5, 1.5), # onset exponents, alternated (random order)
              )->dict:
    "Synthetic vacuum and sample spectra of one group, with the truth."
    from eelsnb.synthetic import synthetic_spectra, default_energy
    if preset not in PRESETS: raise ValueError(f"preset: one of {sorted(PRESETS)}, got {preset!r}.")
    if excitons not in EXCITONS: raise ValueError(f"excitons: one of {sorted(EXCITONS)}, got {excitons!r}.")
    p = PRESETS[preset]
    rng = np.random.default_rng([seed, 7919])
    edges = np.linspace(*gap_range, n_samples + 1)
    gaps = rng.permutation(rng.uniform(edges[:-1], edges[1:]))           # stratified: the whole range in every group
    b = rng.permutation(np.resize(np.asarray(exponents, float), n_samples))
    t = rng.permutation(np.resize(np.asarray(thicknesses, float), n_samples))
    if fwhm is not None and not (np.isfinite(fwhm) and fwhm > 0): raise ValueError(f"fwhm: need a ZLP FWHM > 0 (eV), got {fwhm!r}.")
    kw = dict(energy=default_energy(p["kind"]), fwhm=p["fwhm"] if fwhm is None else float(fwhm), total_counts=p["total_counts"] if total_counts is None else total_counts,
              zlp_broadening=zlp_broadening, read_noise=read_noise, excitons=EXCITONS[excitons])
    vac = synthetic_spectra(n_vacuum, t_over_lambda=0.0, seed=[seed, 1], **kw)
    smp = synthetic_spectra(n_samples, band_gap=gaps, exponent=b, t_over_lambda=t, seed=[seed, 2], **kw)
    return dict(energy=smp.energy, vacuum=vac.counts, samples=smp.counts, band_gap=gaps, exponent=b, t_over_lambda=t,
                zlp_true=smp.zlp, inelastic_true=smp.inelastic, settings=dict(preset=preset, excitons=excitons, **{k: v for k, v in kw.items() if k not in ("energy", "excitons")}))


def training_window(samples, energy, vacuum, **kw)->tuple:
    """dE1, dE2 (n_samples,) from `find_dE1_dE2` with the vacuum as reference, and a bool mask of the samples that needed
    the fallback: where the sample never departs from the reference before the ZLP sinks into the noise (a weak or
    late onset, common at monochromated resolution), `find_dE1_dE2` raises for the whole set and asks for dE1; we then
    take that sample's sink energy e_sink (the dE2 it finds from dE1 = FWHM) and use dE1 = e_sink - backoff x FWHM,
    dE2 = e_sink, as a user following the message would."""
    from eelsnb.preprocess import find_dE1_dE2
    try:
        w = find_dE1_dE2(samples, energy, reference_counts=vacuum, **kw)
        return np.atleast_1d(w.dE1).astype(float), np.atleast_1d(w.dE2).astype(float), np.zeros(len(samples), bool)
    except ValueError as err:
        if "never depart" not in str(err): raise
    d1, d2, fb = np.empty(len(samples)), np.empty(len(samples)), np.zeros(len(samples), bool)
    for i, s in enumerate(samples):
        try:
            w = find_dE1_dE2(s, energy, reference_counts=vacuum, **kw)
            d1[i], d2[i] = w.dE1, w.dE2
        except ValueError as err:
            if "never depart" not in str(err): raise
            probe = find_dE1_dE2(s, energy, reference_counts=vacuum, dE1=float(energy[1] - energy[0]), **kw)
            fw = probe.details["fwhm"]
            probe = find_dE1_dE2(s, energy, reference_counts=vacuum, dE1=fw, **kw)
            d2[i] = probe.dE2; d1[i] = max(probe.dE2 - kw.get("backoff", 1.0) * fw, fw); fb[i] = True
    return d1, d2, fb


def _vacuum_window(vac, e, d2)->tuple:
    "The vacuum spectra's training window (vd1, vd2), as `analyse_spectra` sets it: up to where they sink to 10x their noise."
    from eelsnb.analysis import vacuum_window, zlp_fwhm
    return vacuum_window(vac, e, zlp_fwhm(vac, e), d2)

def _train(smp, vac, e, d1, d2, vwin, n_replicas, max_epochs, seed, read_noise, ensemble_kw, drop_outliers)->tuple:
    """One ensemble on the vacuum (trained over `vwin` = (vd1, vd2) from `_vacuum_window`: up to where it sinks to 10x its
    noise) and the samples (each up to its dE1): its ZLP replicas of the samples (n_rep, n_samples, n_E) and of the vacuum
    (held out beyond vd1), the training seconds, the median validation chi^2 and the number of outlier replicas (dropped
    with `drop_outliers`)."""
    from eelsnb.replicas import training_set_from_spectra
    from eelsnb.ensemble import ZLPEnsemble
    nv = len(vac)
    D1, D2 = np.r_[np.full(nv, vwin[0]), d1], np.r_[np.full(nv, vwin[1]), d2]
    ts = training_set_from_spectra(np.concatenate([vac, smp]), e, D1, D2, n_replicas=n_replicas, seed=seed,
                                   read_noise=read_noise)
    ekw = dict(progress_bar=False, accelerator="cpu", **(ensemble_kw or {}))
    ens = ZLPEnsemble(n_replicas=n_replicas, max_epochs=max_epochs, seed=seed, **ekw).fit(ts)
    chi2_valid, n_out = float(np.median(ens.chi2["valid"])), int(np.sum(ens.outliers))
    if drop_outliers and n_out: ens = ens.drop_outliers()
    return ens.predict_for(smp, e), ens.predict_for(vac, e), ens.fit_seconds, chi2_valid, n_out


def analyse_group(group:dict, # from `make_group`
                  n_replicas:int=100, # replicas (= networks)
                  max_epochs:int=1000, # full-batch training steps
                  seed:int=0, # seed of the replicas, the networks and the window jitter
                  read_noise:float=2.0, # read noise the replicas assume (counts rms)
                  drop_outliers:bool=True, # drop the replicas the ensemble flags
                  dE1_kw:dict|None=None, # options of `find_dE1_dE2`
                  fit_kw:dict|None=None, # options of `fit_band_gap`
                  ensemble_kw:dict|None=None, # options of `ZLPEnsemble`
                  keep:bool=False, # also return the ZLP and inelastic replicas
                  cache:str|None=None, # .npz file of this group's ZLP replicas: loaded when it exists, else written after training
                  twins:bool=False, # also train a twin ensemble (other initial weights, the same data replicas): network-to-network spread
                  calibrate:bool=False, # scale the ZLP spread by its calibration on the held-out vacuum counts
                  refine:float|None=None, # k: where dE1 ends up less than 1 FWHM below the fitted gap, train again with dE1 = gap - k FWHM
                  guard:float=0.0, # an experiment: each sample's dE1 lowered by this many vacuum ZLP FWHM before training (09, "Training the samples less far")
                 )->dict:
    """The method on one group: align, dE1/dE2, train, subtract, fit the band gap; per-sample summaries.
    With `cache`, the trained ensemble's ZLP replicas (and dE1/dE2, training figures) are stored, so that the band-gap
    step can be re-run on the same replicas without training again (the cache is keyed by the file name only: use one
    per seed, preset and ensemble size)."""
    from eelsnb.preprocess import align_zlp, shift_spectra
    from eelsnb.bandgap import fit_band_gap
    from eelsnb.replicas import sigma_poisson
    from eelsnb.subtract import calibrate_spread, scale_spread
    t0 = time.perf_counter()
    e = group["energy"]
    vac, _ = align_zlp(group["vacuum"], e)
    smp, shifts = align_zlp(group["samples"], e)
    if cache is not None and Path(cache).exists():
        c = np.load(cache)
        zlp, d1, d2, fallback = c["zlp"].astype(float), c["dE1"], c["dE2"], c["dE1_fallback"]
        if "zlp_vacuum" not in c: raise ValueError(f"cache: {cache} has no vacuum ZLP replicas (written by an older closure.py); remove it.")
        if "vacuum_dE1" not in c:
            raise ValueError(f"cache: {cache} was trained with the vacuum only up to the lowest sample dE1 (closure.py of "
                             "session 13 or older); remove it, or use another --cache directory.")
        zv, vwin = c["zlp_vacuum"].astype(float), _vacuum_window(vac, e, d2)
        t_train, chi2_valid, n_out = float(c["train_s"]), float(c["chi2_valid"]), int(c["outliers"])
        if zlp.shape[1:] != smp.shape: raise ValueError(f"cache: {cache} holds ZLP replicas of shape {zlp.shape[1:]}, not {smp.shape}.")
    else:
        d1, d2, fallback = training_window(smp, e, vac, **(dE1_kw or {}))
        if guard:   # the samples' ZLP trained less far (less of the onset's resolution tail in it)
            from eelsnb.analysis import zlp_fwhm
            fw = zlp_fwhm(vac, e)
            d1 = np.maximum(d1 - guard * fw, fw)
        vwin = _vacuum_window(vac, e, d2)
        zlp, zv, t_train, chi2_valid, n_out = _train(smp, vac, e, d1, d2, vwin, n_replicas, max_epochs, seed, read_noise,
                                                     ensemble_kw, drop_outliers)
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache, zlp=zlp.astype(np.float32), zlp_vacuum=zv.astype(np.float32), dE1=d1, dE2=d2,
                                dE1_fallback=fallback, train_s=t_train, chi2_valid=chi2_valid, outliers=n_out,
                                vacuum_dE1=vwin[0])
    if refine is not None:
        zlp, zv, d1, refined, t2 = _refined(group, smp, vac, e, zlp, zv, d1, d2, vwin, refine, n_replicas, max_epochs, seed, read_noise,
                                            calibrate, fit_kw, ensemble_kw, drop_outliers, cache)
        t_train += t2
    zt = shift_spectra(group["zlp_true"], shifts / (e[1] - e[0]))
    # the spread calibration from the held-out vacuum counts, and (a diagnostic only the truth allows) the factor the
    # samples' own true ZLPs between dE1 and dE2 would have asked for
    try: cal = calibrate_spread(zv, vac, sigma_poisson(vac, read_noise), e, vwin)
    except ValueError as err:   # as `analyse_spectra`: too little signal held out, the raw spread kept
        if calibrate: warnings.warn(f"spread calibration skipped, the raw spread kept: {err}")
        cal = None
    try: oracle = calibrate_spread(zlp, zt, np.full_like(zt, 1e-6), e, np.stack([d1, d2], -1)).scale
    except ValueError: oracle = np.nan
    raw, applied = {}, (cal.scale if calibrate and cal is not None else 1.0)
    if calibrate:   # the raw fit too, for the comparison (the same fit where the calibration was skipped)
        r_ = fit_band_gap(smp[None] - zlp, e, resolution=zlp, seed=seed, **(fit_kw or {})).summary("band_gap")
        raw = dict(gap_median_raw=r_.median, gap_low_raw=r_.low, gap_high_raw=r_.high, n_valid_raw=np.asarray(r_.n_valid))
        if cal is not None: zlp = scale_spread(zlp, cal.scale)
    inel = smp[None] - zlp
    fit = fit_band_gap(inel, e, resolution=zlp, seed=seed, **{"spread_scale": applied, **(fit_kw or {})})
    sg, sb = fit.summary("band_gap"), fit.summary("exponent")
    it = shift_spectra(group["inelastic_true"], shifts / (e[1] - e[0]))
    out = dict(band_gap=group["band_gap"], exponent=group["exponent"], t_over_lambda=group["t_over_lambda"],
               gap_median=sg.median, gap_low=sg.low, gap_high=sg.high, n_valid=np.asarray(sg.n_valid), dE1_fallback=fallback,
               b_median=sb.median, b_low=sb.low, b_high=sb.high, dE1=d1, dE2=d2,
               **_zlp_diagnostics(zlp, zt, it, d1, group["band_gap"], e),
               n_failed_replicas=fit.failed.sum(0), n_replicas=np.full(len(d1), fit.failed.shape[0]),
               chi2_valid=chi2_valid, outliers=n_out, train_s=t_train, seconds=time.perf_counter() - t0,
               spread_scale=np.nan if cal is None else cal.scale, spread_scale_applied=applied, spread_scale_oracle=oracle,
               vacuum_coverage_before=np.nan if cal is None else cal.coverage_before, vacuum_dE1=vwin[0], **raw)
    if refine is not None: out["refined"] = refined
    if keep: out.update(zlp=zlp, inelastic=inel, fit=fit, energy=e, counts=smp)
    if twins: out.update(_twins(smp, e, vac, n_replicas, max_epochs, seed, read_noise, dE1_kw, fit_kw, ensemble_kw, g=group, cache=cache))
    return out


def _zlp_diagnostics(zlp, zt, it, d1, gap, e)->dict:
    """The ZLP replicas (n_rep, n, n_E) against the true aligned ZLPs `zt` (n, n_E) at dE1 and at the gap, in units of their
    half 68% spread (pulls), their relative spread at the gap, and the true inelastic signal `it` 0.3 eV above the gap in
    units of that spread."""
    zlo, zmed, zhi = np.percentile(zlp, [16, 50, 84], axis=0)
    n = np.arange(len(d1))
    ix = lambda E: np.clip(np.searchsorted(e, E), 0, len(e) - 1)
    pull = lambda i: (zmed[n, i] - zt[n, i]) / np.maximum(0.5 * (zhi - zlo)[n, i], 1e-12)
    i1, ig, ig3 = ix(d1), ix(gap), ix(gap + 0.3)
    return dict(zlp_pull_dE1=pull(i1), zlp_pull_gap=pull(ig), zlp_spread_gap=0.5 * (zhi - zlo)[n, ig] / zt[n, ig],
                inelastic_over_zlp_spread_gap_plus_0p3=it[n, ig3] / np.maximum(0.5 * (zhi - zlo)[n, ig3], 1e-12))


def analyse_group_pipeline(group:dict, # from `make_group`
                           n_replicas:int=100, max_epochs:int=1000, # ensemble size and training steps
                           seed:int=0, # seed of `analyse_spectra` (replicas, networks, window jitter)
                           calibrate="auto", # `analyse_spectra(calibrate=...)`: 'auto' (its default), True (`--calibrate`) or False
                           cache:str|None=None, # model directory: the trained ensemble is saved there, and loaded (with its spread calibration) when present
                           ensemble_kw:dict|None=None, # more ZLPEnsemble options
                          )->dict:
    """The product's own pipeline on one group: `eelsnb.analysis.analyse_spectra` with its defaults (one alignment of all
    spectra, dE1/dE2, the vacuum trained up to where it sinks to 10x its noise, errors from the vacuum spectra's spread
    (sigma='auto'), the power-law onset), or as `--calibrate` runs it; the group's truth beside. `analyse_group` instead
    takes the method step by step (the same vacuum window, Poisson errors, each group aligned in two parts) for its
    experiments. Records as `analyse_group`, for `figures`: with its ZLP diagnostics and, calibrated, the raw fit of the
    same ensemble (`gap_*_raw`) and the factor the samples' true ZLPs between dE1 and dE2 ask for (`spread_scale_oracle`)."""
    from eelsnb.analysis import analyse_spectra
    from eelsnb.ensemble import ZLPEnsemble
    from eelsnb.subtract import calibrate_spread
    t0 = time.perf_counter()
    ens = ZLPEnsemble.load(cache) if cache is not None and Path(cache).exists() else None
    size = dict(n_replicas=n_replicas, max_epochs=max_epochs) if ens is None else {}
    run = lambda ensemble=ens, **w: analyse_spectra(group["samples"], group["vacuum"], group["energy"], seed=seed, progress=False,
                                                    exciton_windows=(), plasmon_window=None, calibrate=calibrate if ensemble is None else "auto",   # a given ensemble: its stored calibration
                                                    ensemble=ensemble, **w, **({} if ensemble is not None else size), **(ensemble_kw or {}))
    fallback, w = np.zeros(len(group["samples"]), bool), {}
    try: res = run()
    except ValueError as err:   # a sample never departs from the vacuum: as the error advises, dE1 given (`training_window`'s fallback)
        if "never depart" not in str(err): raise
        from eelsnb.preprocess import align_zlp
        al, _ = align_zlp(np.concatenate([group["vacuum"], group["samples"]]), group["energy"])
        d1, d2, fallback = training_window(al[len(group["vacuum"]):], group["energy"], al[:len(group["vacuum"])])
        import re   # the samples the set's error named (alone, `training_window` may find their departure after all)
        named = [int(k) for k in re.findall(r"sample_(\d+): ", str(err)) if int(k) < len(fallback)]
        fallback = fallback.copy(); fallback[named] = True
        w = dict(dE1=d1, dE2=d2)
        res = run(**w)
    if cache is not None and ens is None: res.ensemble.save(cache)
    sg, sb, fit = res.summary("band_gap"), res.summary("exponent"), res.band_gap_fit
    n = res.n_samples
    cal = res.ensemble.spread_calibration
    out = dict(band_gap=group["band_gap"], exponent=group["exponent"], t_over_lambda=group["t_over_lambda"],
               gap_median=sg.median, gap_low=sg.low, gap_high=sg.high, n_valid=np.asarray(sg.n_valid),
               b_median=sb.median, b_low=sb.low, b_high=sb.high, dE1=res.window.dE1, dE2=res.window.dE2,
               dE1_fallback=fallback, n_failed_replicas=fit.failed.sum(0), n_replicas=np.full(n, fit.failed.shape[0]),
               chi2_valid=float(np.median(res.ensemble.chi2["valid"])), outliers=int(np.sum(res.ensemble.outliers)),
               train_s=float(res.seconds.get("train", 0.0)), seconds=time.perf_counter() - t0,
               vacuum_dE1=float(res.settings.get("vacuum_dE1", np.nan)))
    # diagnostics only the truth allows: the true ZLPs and inelastic signal aligned as the samples were
    from eelsnb.preprocess import shift_spectra
    e, m = group["energy"], len(group["vacuum"])
    sh = np.asarray(res.shifts)[m:] / (e[1] - e[0])
    zt, it = shift_spectra(group["zlp_true"], sh), shift_spectra(group["inelastic_true"], sh)
    out.update(_zlp_diagnostics(res.subtraction.zlp, zt, it, res.window.dE1, group["band_gap"], e))
    if calibrate is not False:   # calibrated or 'auto': the raw fit beside (the same fit where nothing was calibrated)
        e_ = res.ensemble
        if res.subtraction.spread_scale == 1.0: raw = res   # nothing calibrated: the raw fit is this one
        else:
            kept, e_.spread_calibration = e_.spread_calibration, None
            try: raw = run(ensemble=e_, **w)   # the same ensemble, its raw spread: the raw fit beside
            finally: e_.spread_calibration = kept
        r_ = raw.summary("band_gap")
        try: oracle = calibrate_spread(raw.subtraction.zlp, zt, np.full_like(zt, 1e-6), e,
                                       np.stack([res.window.dE1, res.window.dE2], -1)).scale
        except ValueError: oracle = np.nan
        out.update(spread_scale=np.nan if cal is None else cal.scale, spread_scale_applied=float(res.subtraction.spread_scale),
                   spread_scale_oracle=oracle, vacuum_coverage_before=np.nan if cal is None else cal.coverage_before,
                   gap_median_raw=r_.median, gap_low_raw=r_.low, gap_high_raw=r_.high, n_valid_raw=np.asarray(r_.n_valid))
    return out

def _refined(group, smp, vac, e, zlp, zv, d1, d2, vwin, k, n_replicas, max_epochs, seed, read_noise, calibrate, fit_kw, ensemble_kw,
             drop_outliers, cache):
    """dE1 refinement: fit the band gap with the first ensemble; where dE1 lies less than 1 FWHM below the fitted median gap
    (the sample's onset, blurred by the resolution, then reaches into the ZLP training data), set dE1 = gap - k FWHM
    (at least 1 FWHM) and train once more. Returns the new ZLP replicas (samples, vacuum), dE1, the refined mask and
    the training seconds (cached beside `cache`)."""
    from eelsnb.analysis import zlp_fwhm
    from eelsnb.bandgap import fit_band_gap
    from eelsnb.replicas import sigma_poisson
    from eelsnb.subtract import calibrate_spread, scale_spread
    fw = zlp_fwhm(vac, e)
    z = zlp
    if calibrate:
        try: k_ = calibrate_spread(zv, vac, sigma_poisson(vac, read_noise), e, vwin).scale
        except ValueError: k_ = 1.0
        z = scale_spread(zlp, k_)
    g = fit_band_gap(smp[None] - z, e, resolution=z, seed=seed, **{"spread_scale": k_ if calibrate else 1.0, **(fit_kw or {})})
    gap = g.summary("band_gap").median
    refined = np.isfinite(gap) & (d1 > gap - fw)
    if not refined.any(): return zlp, zv, d1, refined, 0.0
    d1 = np.where(refined, np.maximum(gap - k * fw, fw), d1)
    rc = None if cache is None else str(cache).replace(".npz", f"_refine{k:g}.npz")
    if rc is not None and Path(rc).exists():
        c = np.load(rc)
        return c["zlp"].astype(float), c["zlp_vacuum"].astype(float), c["dE1"], c["refined"], float(c["train_s"])
    zlp, zv, t_train, _, _ = _train(smp, vac, e, d1, d2, vwin, n_replicas, max_epochs, seed, read_noise, ensemble_kw, drop_outliers)
    if rc is not None:
        np.savez_compressed(rc, zlp=zlp.astype(np.float32), zlp_vacuum=zv.astype(np.float32), dE1=d1, refined=refined,
                            train_s=t_train)
    return zlp, zv, d1, refined, t_train


def _twins(smp, e, vac, n_replicas, max_epochs, seed, read_noise, dE1_kw, fit_kw, ensemble_kw, g, cache=None)->dict:
    """Twin ensembles: two ensembles trained on the *same* data replicas with different initial weights (seeds `seed` and
    `seed + 1000`, no outliers dropped, so replica k of one pairs with replica k of the other). Per sample: the replica
    spread s_rep of E_bg (half the 16-84% range, both ensembles pooled), the network-to-network spread
    s_f = half the 16-84% range of E_A - E_B over sqrt(2), and the half-width h = sqrt(max(s_rep^2 - s_f^2, 0) + 1.57 s_f^2 / n)
    an interval would have if the networks' own scatter averaged out in the median (the data part kept whole)."""
    from eelsnb.replicas import training_set_from_spectra
    from eelsnb.ensemble import ZLPEnsemble
    from eelsnb.bandgap import fit_band_gap
    tc = None if cache is None else str(cache).replace(".npz", "_twins.npz")
    if tc is not None and Path(tc).exists():
        c = np.load(tc); zA, zB = c["zA"].astype(float), c["zB"].astype(float)
    else:
        d1, d2, _ = training_window(smp, e, vac, **(dE1_kw or {}))
        nv = len(vac)
        vd1, vd2 = _vacuum_window(vac, e, d2)
        D1, D2 = np.r_[np.full(nv, vd1), d1], np.r_[np.full(nv, vd2), d2]
        ts = training_set_from_spectra(np.concatenate([vac, smp]), e, D1, D2, n_replicas=n_replicas, seed=seed, read_noise=read_noise)
        ekw = dict(progress_bar=False, accelerator="cpu", **(ensemble_kw or {}))
        zA, zB = (ZLPEnsemble(n_replicas=n_replicas, max_epochs=max_epochs, seed=seed + 1000 * k, **ekw).fit(ts).predict_for(smp, e)
                  for k in (0, 1))
        if tc is not None: np.savez_compressed(tc, zA=zA.astype(np.float32), zB=zB.astype(np.float32))
    EA, EB = (fit_band_gap(smp[None] - z, e, resolution=z, seed=seed, **(fit_kw or {})).band_gap for z in (zA, zB))
    n_s = EA.shape[1]
    med, srep, sf, h = (np.full(n_s, np.nan) for _ in range(4))
    for i in range(n_s):
        a, b = EA[:, i], EB[:, i]
        pool = np.r_[a[np.isfinite(a)], b[np.isfinite(b)]]
        both = np.isfinite(a) & np.isfinite(b)
        if len(pool) < 5 or both.sum() < 5: continue
        lo, med[i], hi = np.percentile(pool, [16, 50, 84])
        srep[i] = 0.5 * (hi - lo)
        sf[i] = 0.5 * np.subtract(*np.percentile(a[both] - b[both], [84, 16])) / np.sqrt(2)
        h[i] = np.sqrt(max(srep[i] ** 2 - sf[i] ** 2, 0) + 1.57 * sf[i] ** 2 / len(pool))
    return dict(twin_median=med, twin_srep=srep, twin_sf=sf, twin_h=h)


def run_closure(seeds=(1, 2, 3, 4), # one group per seed
                n_samples:int=6, # samples per group
                n_replicas:int=100, max_epochs:int=1000, # ensemble size and training steps
                preset:str="specimen4", excitons:str="none", total_counts:float|None=None,
                zlp_broadening:float=0.3, read_noise:float=2.0,
                dE1_kw:dict|None=None, fit_kw:dict|None=None, ensemble_kw:dict|None=None,
                progress:bool=False, # print one line per group to stderr
                twins:bool=False, # also train twin ensembles per group (see `_twins`)
                cache_dir:str|None=None, # directory of per-group ZLP-replica caches (see `analyse_group`); None: always train
                calibrate:bool|None=None, # scale each group's ZLP spread by its held-out vacuum calibration; None: the step-by-step method doesn't, the pipeline runs analyse_spectra's 'auto'
                fwhm:float|None=None, # ZLP FWHM (eV) instead of the preset's (its axis and dose stay)
                thicknesses=THICKNESSES, # t/lambda of the samples (cycled)
                refine:float|None=None, # dE1 refinement (see `analyse_group`)
                guard:float=0.0, # each sample's dE1 lowered by this many ZLP FWHM before training (see `analyse_group`)
                pipeline:bool=False, # run `analyse_spectra` itself with its defaults (`analyse_group_pipeline`) instead of the step-by-step method
               )->dict:
    "Run the closure over the groups; per-sample records (concatenated) and the figures."
    if pipeline and (twins or refine is not None or guard):
        raise ValueError("pipeline: analyse_spectra runs with its own settings; twins, refine and guard apply to the step-by-step method only.")
    t0 = time.perf_counter()
    recs = []
    for s in seeds:
        g = make_group(s, n_samples, preset=preset, total_counts=total_counts, excitons=excitons,
                       zlp_broadening=zlp_broadening, read_noise=read_noise, fwhm=fwhm, thicknesses=thicknesses)
        extra = ("" if fwhm is None else f"_fwhm{fwhm:g}") + (
            "" if tuple(thicknesses) == THICKNESSES else "_t" + "-".join(f"{t:g}" for t in thicknesses)) + (f"_guard{guard:g}" if guard else "")
        cache = None if cache_dir is None else str(Path(cache_dir) / (
            f"{preset}_{excitons}_{n_samples}x{n_replicas}x{max_epochs}_dose{total_counts or PRESETS[preset]['total_counts']:g}"
            f"_k{zlp_broadening:g}_rn{read_noise:g}{extra}_seed{s}.npz"))
        if pipeline:
            mode = "auto" if calibrate is None else bool(calibrate)   # the product's default is 'auto'
            r = analyse_group_pipeline(g, n_replicas, max_epochs, seed=s, calibrate=mode, ensemble_kw=ensemble_kw,
                                       cache=None if cache is None else cache.replace(".npz", "_pipeline" + {True: "_cal14", "auto": "_auto14", False: ""}[mode]))   # `_cal`: the calibrated training of session 13 and older
        else:
            r = analyse_group(g, n_replicas, max_epochs, seed=s, read_noise=read_noise, dE1_kw=dE1_kw, fit_kw=fit_kw,
                              ensemble_kw=ensemble_kw, cache=cache, twins=twins, calibrate=bool(calibrate), refine=refine, guard=guard)
        recs.append(r)
        if progress:
            f = figures([r])
            cal = (f"spread x {r['spread_scale']:.3f} (oracle {r['spread_scale_oracle']:.3f}{'' if r.get('spread_scale_applied', 1.0) != 1.0 else ', not applied'}), "
                   if "spread_scale" in r else "")
            print(f"group seed {s}: {r['seconds']:.1f} s (training {r['train_s']:.1f} s), chi2/N valid {r['chi2_valid']:.3g}, {cal}"
                  f"median |err| {f['band_gap']['median_abs_error']} eV, coverage {f['band_gap']['coverage']:.2f}, "
                  f"{f['failures']['spectra_without_valid_fit']} without a valid fit",
                  file=sys.stderr, flush=True)
    keys = [k for k, v in recs[0].items() if isinstance(v, np.ndarray)]
    rec = {k: np.concatenate([r[k] for r in recs]) for k in keys}
    rec["group"] = np.concatenate([np.full(len(r["band_gap"]), s) for s, r in zip(seeds, recs)])
    fig = figures(recs)
    fig["settings"] = dict(seeds=list(seeds), n_samples=n_samples, n_replicas=n_replicas, max_epochs=max_epochs,
                           preset=preset, excitons=excitons, total_counts=total_counts or PRESETS[preset]["total_counts"],
                           fwhm=PRESETS[preset]["fwhm"] if fwhm is None else fwhm, thicknesses=list(thicknesses),
                           zlp_broadening=zlp_broadening, read_noise=read_noise,
                           dE1_kw=dE1_kw or {}, fit_kw=fit_kw or {}, ensemble_kw=ensemble_kw or {}, calibrate=calibrate,
                           guard=guard, pipeline=pipeline)
    fig["run_time_s"] = round(time.perf_counter() - t0, 1)
    fig["train_s"] = round(float(sum(r["train_s"] for r in recs)), 1)
    return dict(records=rec, figures=fig)


def _stats(truth, med, lo, hi, valid)->dict:
    "Median |error| (failures count as infinite), over valid fits only, bias, coverage (failures: not covered), width."
    truth, med, lo, hi, valid = (np.asarray(v) for v in (truth, med, lo, hi, valid))
    n = len(truth)
    if n == 0: return dict(n=0)
    err = np.where(valid, np.abs(med - truth), np.inf)
    cov = valid & (lo <= truth) & (truth <= hi)
    r = lambda v: None if not np.isfinite(v) else round(float(v), 4)
    return dict(n=int(n), median_abs_error=r(np.median(err)),
                median_abs_error_valid=r(np.median(err[valid])) if valid.any() else None,
                bias=r(np.median((med - truth)[valid])) if valid.any() else None,
                coverage=round(float(cov.mean()), 4),
                median_width=r(np.median((hi - lo)[valid])) if valid.any() else None,
                failed=int(np.sum(~valid)))


def figures(recs)->dict:
    "Closure figures from per-group records (a list of `analyse_group` outputs, or one concatenated record)."
    recs = recs if isinstance(recs, (list, tuple)) else [recs]
    cat = lambda k: np.concatenate([np.atleast_1d(r[k]) for r in recs])
    g, b, t = cat("band_gap"), cat("exponent"), cat("t_over_lambda")
    valid = cat("n_valid") > 0
    gm, gl, gh, bm, bl, bh = (cat(k) for k in ("gap_median", "gap_low", "gap_high", "b_median", "b_low", "b_high"))
    snr = cat("inelastic_over_zlp_spread_gap_plus_0p3") if "inelastic_over_zlp_spread_gap_plus_0p3" in recs[0] else None
    def both(m):
        out = dict(band_gap=_stats(g[m], gm[m], gl[m], gh[m], valid[m]), exponent=_stats(b[m], bm[m], bl[m], bh[m], valid[m]))
        if snr is not None and m.any(): out["inelastic_over_zlp_spread_at_gap_plus_0p3"] = round(float(np.median(snr[m])), 2)
        return out
    allm = np.ones(len(g), bool)
    f = dict(n_spectra=int(len(g)), n_groups=len(recs), **both(allm))
    f["failures"] = dict(spectra_without_valid_fit=int(np.sum(~valid)),
                         replica_fits_failed_fraction=round(float(cat("n_failed_replicas").sum() / cat("n_replicas").sum()), 4))
    f["by_exponent"] = {f"{v:g}": both(b == v) for v in np.unique(b)}
    f["by_gap"] = {f"{lo:g}-{hi:g}": both((g >= lo) & (g < hi if hi < GAP_BINS[-1][1] else g <= hi)) for lo, hi in GAP_BINS}
    f["by_thickness"] = {f"{v:g}": both(t == v) for v in np.unique(t)}
    f["ensemble"] = dict(chi2_valid_median=[round(float(r["chi2_valid"]), 3) for r in recs if "chi2_valid" in r],
                         outliers_dropped=[int(r["outliers"]) for r in recs if "outliers" in r],
                         dE1_minus_gap_median=round(float(np.median(cat("dE1") - g)), 4),
                         dE1_above_gap=int(np.sum(cat("dE1") > g)), dE1_fallback=int(np.sum(cat("dE1_fallback"))))
    if "gap_median_raw" in recs[0]:   # calibrated runs: the raw intervals of the same replicas
        f["band_gap_raw"] = _stats(g, cat("gap_median_raw"), cat("gap_low_raw"), cat("gap_high_raw"), cat("n_valid_raw") > 0)
        f["by_exponent_raw"] = {f"{v:g}": _stats(g[b == v], cat("gap_median_raw")[b == v], cat("gap_low_raw")[b == v],
                                                 cat("gap_high_raw")[b == v], (cat("n_valid_raw") > 0)[b == v]) for v in np.unique(b)}
    if "spread_scale" in recs[0]:   # one calibration per group (the records repeat it per sample)
        per = lambda k: [round(float(np.atleast_1d(r[k]).ravel()[0]), 3) for r in recs]
        f["calibration"] = dict(scale=per("spread_scale"), applied=per("spread_scale_applied"), oracle=per("spread_scale_oracle"),
                                vacuum_coverage_before=per("vacuum_coverage_before"))
    if "twin_h" in recs[0]:   # twin ensembles: how much of the spread is the networks' own, and the interval without it
        tm, th, ts_, tf = cat("twin_median"), cat("twin_h"), cat("twin_srep"), cat("twin_sf")
        ok = np.isfinite(th)
        cov = ok & (np.abs(tm - g) <= th)
        f["twins"] = dict(n=int(ok.sum()), median_sf_over_srep=round(float(np.median(tf[ok] / ts_[ok])), 3),
                          coverage_replica_spread=round(float(np.mean(ok & (np.abs(tm - g) <= ts_))), 4),
                          coverage_without_network_scatter=round(float(cov.mean()), 4),
                          median_abs_error=round(float(np.median(np.abs(tm - g)[ok])), 4),
                          by_exponent={f"{v:g}": dict(coverage_without_network_scatter=round(float(cov[b == v].mean()), 4),
                                                      median_half_width=round(float(np.median(th[(b == v) & ok])), 4),
                                                      median_sf_over_srep=round(float(np.median((tf / ts_)[(b == v) & ok])), 3))
                                       for v in np.unique(b)})
    if "zlp_pull_gap" in recs[0]:
        q = lambda k: round(float(np.median(np.abs(cat(k)))), 3)
        f["ensemble"].update(zlp_abs_pull_dE1_median=q("zlp_pull_dE1"), zlp_abs_pull_gap_median=q("zlp_pull_gap"),
                             zlp_rel_spread_gap_median=q("zlp_spread_gap"),
                             inelastic_over_zlp_spread_at_gap_plus_0p3_median=q("inelastic_over_zlp_spread_gap_plus_0p3"))
    return f


def main(argv=None)->dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 groups x 6 samples, 50 replicas, 600 epochs (the test's size)")
    ap.add_argument("--groups", type=int, default=8, help="groups (seeds 1..N); 6 samples each")
    ap.add_argument("--samples", type=int, default=6, help="samples per group")
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--preset", default="specimen4", choices=sorted(PRESETS))
    ap.add_argument("--excitons", default="none", choices=sorted(EXCITONS))
    ap.add_argument("--dose", type=float, default=None, help="electrons per spectrum (default: the preset's)")
    ap.add_argument("--fwhm", type=float, default=None, help="ZLP FWHM (eV) instead of the preset's; its axis and dose stay")
    ap.add_argument("--thicknesses", type=float, nargs="+", default=list(THICKNESSES), metavar="T",
                    help="t/lambda of the samples, cycled (default: %(default)s)")
    ap.add_argument("--zlp-broadening", type=float, default=0.3)
    ap.add_argument("--read-noise", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--twins", action="store_true", help="also train a twin ensemble per group (same data replicas, other initial "
                    "weights) and report how much of the band-gap spread is the networks' own scatter")
    ap.add_argument("--cache", default=None, help="directory for the trained ZLP replicas per group: reused when present "
                    "(re-fit the band gap without training again)")
    ap.add_argument("--refine", type=float, default=None, metavar="K", help="where dE1 lies less than 1 FWHM below a sample's "
                    "fitted gap, set dE1 = gap - K FWHM and train once more (an experiment: 09, 'Moving dE1 below the fitted gap')")
    ap.add_argument("--calibrate", action="store_const", const=True, default=None, help="scale the ZLP spread by its held-out "
                    "vacuum calibration (eelsnb.subtract.calibrate_spread) and fit with spread_scale= the factor; the raw figures "
                    "are kept beside (band_gap_raw). Default: not in the step-by-step method, analyse_spectra's 'auto' with --pipeline")
    ap.add_argument("--no-calibrate", action="store_const", const=False, dest="calibrate", help="with --pipeline: the raw "
                    "spread (analyse_spectra(calibrate=False))")
    ap.add_argument("--guard", type=float, default=0.0, metavar="K", help="lower each sample's dE1 by K vacuum ZLP FWHM (not below "
                    "one FWHM) before training; the vacuum is then held out from the lowest of them (an experiment: 09, 'Training the "
                    "samples less far')")
    ap.add_argument("--pipeline", action="store_true", help="run eelsnb.analysis.analyse_spectra itself with its defaults (vacuum "
                    "tails trained, errors from the vacuum spectra's spread, calibrated at a ZLP FWHM of 0.1 eV and finer; "
                    "--calibrate / --no-calibrate as `eelsnb spectra` takes them) "
                    "instead of the method step by step; --cache then keeps each group's trained model")
    a = ap.parse_args(argv)
    if a.quick: a.groups, a.replicas, a.epochs = 4, 50, 600
    if a.pipeline and (a.twins or a.refine is not None or a.guard):
        ap.error("--pipeline runs analyse_spectra with its own settings: --twins, --refine and --guard apply to the step-by-step method only.")
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    res = run_closure(seeds=tuple(range(a.first_seed, a.first_seed + a.groups)), n_samples=a.samples,
                      n_replicas=a.replicas, max_epochs=a.epochs, preset=a.preset, excitons=a.excitons,
                      total_counts=a.dose, zlp_broadening=a.zlp_broadening, read_noise=a.read_noise, progress=True,
                      cache_dir=a.cache, twins=a.twins, calibrate=a.calibrate, fwhm=a.fwhm, thicknesses=tuple(a.thicknesses),
                      refine=a.refine, guard=a.guard, pipeline=a.pipeline)
    fig = res["figures"]
    fig["machine"] = dict(python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads(),
                          cpus=os.cpu_count())
    print(json.dumps(fig))
    return fig


if __name__ == "__main__":
    main()
