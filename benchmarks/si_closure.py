#!/usr/bin/env python
"""Closure of the SI band-gap map on synthetic truth: do its per-pixel 68% intervals hold the true gap?

`benchmarks/closure.py` checks single spectra with vacuum references. A spectral image has none: `analyse_image`
trains the ZLP ensemble on the SI's own thickness clusters (`ZLPEnsemble.fit_si`), so beyond each cluster's dE1 the
ZLP under the flake is the networks' extrapolation. This script measures what that does to the maps.

For each seed it draws `eelsnb.synthetic.synthetic_si` (default 48 x 48 pixels, 2048 channels to 48 eV, two band-gap
regions at 1.2 and 2.0 eV, 4 thickness terraces at t/lambda 0.3, 0.6, 1.0, 1.5, 1e6 electrons per pixel, the given
exponent and ZLP FWHM), clusters it by thickness (4 clusters), runs `analyse_image` (100 replicas x 1000 epochs) and
compares the band-gap map with the truth on every flake pixel:

- per band-gap region and terrace: pixels, pixels with a gap, coverage of the 68% interval (a pixel without a gap
  counts as not covered), median |error| and bias of the pixel medians, median interval width;
- over the flake: the same coverage; the t/lambda map against the truth's log-ratio over the axis (`log_ratio`).

`--isolate N` refits N pixels per cell with the ZLP replicas moved onto the true ZLP (replica - median + truth: the same
spread, no bias) with `fit_band_gap` as the analysis calls it, to tell the share of the ZLP's extrapolation from that
of the onset fit itself.

Prints one JSON line per seed (`row: "seed"`) and one over all seeds (`row: "total"`).

Usage: python benchmarks/si_closure.py [--seeds 0 1 2] [--exponent 0.5] [--fwhm 0.45] [--size 48] [--replicas 100]
                                       [--epochs 1000] [--isolate 0] [--threads 1]
"""
import argparse, json, time, warnings

import numpy as np


def cells(si, bg, isolate_fn=None):
    "Per (region, terrace) rows, and the per-pixel coverage over the flake."
    rows = []
    covered = (bg.low <= si.band_gap) & (si.band_gap <= bg.high)   # NaN (no gap): not covered
    for r, g in enumerate(si.band_gaps):
        for t in range(1, int(si.terrace.max()) + 1):
            m = ~si.vacuum & (si.region == r) & (si.terrace == t)
            if not m.any(): continue
            ok = m & (bg.n_valid > 0)
            err = bg.median[ok] - g
            row = dict(region=r, band_gap=float(g), terrace=t, t_over_lambda=float(si.t_levels[t - 1]),
                       pixels=int(m.sum()), with_gap=int(ok.sum()), coverage=round(float(covered[m].mean()), 3),
                       median_abs_error=round(float(np.median(np.abs(err))), 3) if ok.any() else None,
                       bias=round(float(np.median(err)), 3) if ok.any() else None,
                       width=round(float(np.median(bg.width[ok])), 3) if ok.any() else None)
            if isolate_fn is not None: row["true_zlp"] = isolate_fn(np.argwhere(m), g)
            rows.append(row)
    return rows, covered[~si.vacuum]


def run(seed, a):
    import torch
    torch.set_num_threads(a.threads)
    from eelsnb.synthetic import synthetic_si
    from eelsnb.cluster import cluster_thickness
    from eelsnb.image import analyse_image
    from eelsnb.bandgap import fit_band_gap
    si = synthetic_si(shape=(a.size, a.size), band_gaps=(1.2, 2.0), exponent=a.exponent, fwhm=a.fwhm,
                      total_counts=1e6, seed=seed, components=a.isolate > 0)
    cl = cluster_thickness(si.counts, si.energy, n_clusters=4, seed=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = analyse_image(si, clusters=cl, n_replicas=a.replicas, max_epochs=a.epochs, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    bg, tl = res.maps["band_gap"], res.maps["t_over_lambda"]
    rng = np.random.default_rng(seed)

    def isolate(pix, g):   # refit with the replicas moved onto the true ZLP: what the onset fit alone gives
        pix = pix[rng.choice(len(pix), min(a.isolate, len(pix)), replace=False)]
        c = si.counts[pix[:, 0], pix[:, 1]].astype(float)
        z = res.ensemble.predict_for(c, si.energy)
        z = z - np.median(z, 0) + si.zlp[pix[:, 0], pix[:, 1]]
        s = fit_band_gap(c[None] - z, si.energy, resolution=z, seed=seed).summary("band_gap")
        ok = np.isfinite(s.median)
        return dict(pixels=len(pix), coverage=round(float(np.mean((s.low <= g) & (g <= s.high))), 3),
                    bias=round(float(np.median(s.median[ok] - g)), 3) if ok.any() else None,
                    width=round(float(np.median((s.high - s.low)[ok])), 3) if ok.any() else None)

    rows, cov = cells(si, bg, isolate if a.isolate > 0 else None)
    fl = ~si.vacuum
    t_cov = (tl.low <= si.log_ratio) & (si.log_ratio <= tl.high)
    cautions = [str(w.message).split(":")[0] for w in caught]
    return dict(row="seed", seed=seed, exponent=a.exponent, fwhm=a.fwhm, shape=[a.size, a.size], replicas=a.replicas,
                epochs=a.epochs, seconds=round(seconds, 1), zlp_fwhm=res.settings.get("zlp_fwhm"),
                dE1=[round(float(v), 3) for v in np.atleast_1d(res.ensemble.dE1)],
                flake_pixels=int(fl.sum()), flake_coverage=round(float(cov.mean()), 3),
                t_over_lambda=dict(coverage=round(float(t_cov[fl].mean()), 3),
                                   median_abs_error=round(float(np.median(np.abs(tl.median - si.log_ratio)[fl])), 4)),
                cautions=sorted(set(cautions)), cells=rows), cov


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--exponent", type=float, default=0.5, help="true onset exponent (0.5 direct, 1.5 indirect)")
    p.add_argument("--fwhm", type=float, default=0.45, help="vacuum ZLP FWHM (eV)")
    p.add_argument("--size", type=int, default=48, help="SI of size x size pixels")
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--isolate", type=int, default=0, help="refit this many pixels per cell on the true ZLP (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args()
    covs, cells_all = [], []
    for s in a.seeds:
        d, cov = run(s, a)
        print(json.dumps(d), flush=True)
        covs.append(cov); cells_all += d["cells"]
    c = np.array([r["coverage"] for r in cells_all])
    b = np.array([r["bias"] for r in cells_all if r["bias"] is not None])
    print(json.dumps(dict(row="total", seeds=a.seeds, exponent=a.exponent, fwhm=a.fwhm,
                          flake_coverage=round(float(np.concatenate(covs).mean()), 3),
                          cell_coverage_min_max=[round(float(c.min()), 3), round(float(c.max()), 3)],
                          cells_below_0_5=int((c < 0.5).sum()), cells=len(c),
                          bias_min_max=[round(float(b.min()), 3), round(float(b.max()), 3)] if len(b) else None)))


if __name__ == "__main__":
    main()
