#!/usr/bin/env python
"""Latency of the SI explorer (eelsnb.widgets.si_explorer): time from a pixel pick to updated figure data.

A synthetic SI (default 128 x 128 pixels x 2048 channels, `eelsnb.synthetic.synthetic_si`) and a ZLP ensemble of
100 replicas trained on it with `fit_si` (briefly: training is not what is measured). The maps:

- `--maps full`: `analyse_image` on the whole SI with that ensemble (every pixel x every replica: ~15 min on 2 cores);
- `--maps tiled` (default): `analyse_image` on the top-left `--tile` x `--tile` pixels, tiled over the image. A pick
  reads only the picked pixel's values from the maps, so their content does not change what is timed; their shape
  (ny, nx) is that of the SI, and the panel is built on them as on real maps.

Then `--picks` distinct pixels (never the same twice: the panel's per-pixel cache never hits) are picked with
`SIExplorer.pick` (what a click on the map calls: both sliders, one redraw) and timed until the figure's traces hold
the new data; median and 95th percentile in ms, split into the pixel's computation (`pixel_view`) and the rest.
Baselines in the same run: the naive redraw, a new panel (`si_explorer`: figure, heatmap with its hover intervals,
spectrum traces) built for each picked pixel; and the naive computation of the same curves (the ZLP on all 2048
channels, percentiles over all of them, `BandGapFit.model`'s loop over the resolution kernel). Not included in either: the transfer to the browser and plotly.js's
redraw (no front-end here; see tests/test_browser.py for the real browser).

Prints one JSON line. Usage: python benchmarks/explorer_latency.py [--size 128 --replicas 100 --epochs 200
--picks 60 --baseline-picks 10 --maps tiled --tile 24 --cache DIR]
"""
import argparse, json, os, platform, time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=5)
    ap.add_argument("--picks", type=int, default=60)
    ap.add_argument("--baseline-picks", type=int, default=10)
    ap.add_argument("--maps", choices=("tiled", "full"), default="tiled")
    ap.add_argument("--tile", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="directory to keep the SI, ensemble and maps between runs")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from eelsnb.synthetic import synthetic_si
    from eelsnb.cluster import cluster_thickness
    from eelsnb.ensemble import ZLPEnsemble
    from eelsnb.image import analyse_image, ImageResults
    from eelsnb.widgets import si_explorer, pixel_view

    t0 = time.perf_counter()
    cache = Path(a.cache) if a.cache else None
    tag = f"{a.size}_{a.replicas}_{a.epochs}_{a.clusters}_{a.seed}_{a.maps}_{a.tile}"
    si = synthetic_si(shape=(a.size, a.size), band_gaps=(1.2, 2.0), exponent=0.5, total_counts=1e6, seed=a.seed)
    counts, energy = si.counts, si.energy
    t_si = time.perf_counter() - t0
    if cache and (cache / tag / "results.json").is_file():
        res = ImageResults.load(cache / tag)
        t_train = t_maps = 0.0
    else:
        t1 = time.perf_counter()
        cl = cluster_thickness(counts, energy, n_clusters=a.clusters, seed=a.seed)
        ens = ZLPEnsemble(n_replicas=a.replicas, max_epochs=a.epochs, seed=a.seed, progress_bar=False).fit_si(counts, energy, clusters=cl)
        t2 = time.perf_counter()
        if a.maps == "full":
            res = analyse_image(counts, energy, ensemble=ens, clusters=cl, seed=a.seed, progress=False)
        else:
            t = a.tile
            sub = analyse_image(counts[:t, :t], energy, ensemble=ens, clusters=cl.labels[:t, :t], n_clusters=a.clusters, seed=a.seed, progress=False)
            reps = (-(-a.size // t), -(-a.size // t))
            tile = lambda x: np.tile(np.asarray(x), reps)[:a.size, :a.size]
            maps = {n: type(s)(*(tile(v) for v in s)) for n, s in sub.maps.items()}
            res = ImageResults(energy, (a.size, a.size), maps, tile(sub.n_failed), sub.n_rep, cl, ens, sub.grid, {},
                               dict(sub.settings, dE1=list(np.atleast_1d(ens.dE1)), dE2=list(np.atleast_1d(ens.dE2))))
        t_maps = time.perf_counter() - t2
        t_train = t2 - t1
        if cache: res.save(cache / tag, overwrite=True)
    rng = np.random.default_rng(a.seed)
    n = a.size * a.size
    flat = rng.choice(n, size=a.picks + a.baseline_picks + 1, replace=False)
    pix = [divmod(int(k), a.size) for k in flat]

    t3 = time.perf_counter()
    ex = si_explorer(res, counts, pixel=pix[0], cache=0)
    t_build = time.perf_counter() - t3
    total, compute = [], []
    for iy, ix in pix[1:a.picks + 1]:
        t = time.perf_counter()
        ex.pick(iy, ix)
        total.append(time.perf_counter() - t)
        assert ex.figure.data[3].x == (ix,) and ex.figure.data[3].y == (iy,)
        np.testing.assert_allclose(ex.figure.data[4].y, counts[iy, ix][(energy >= -1) & (energy <= 8)], rtol=1e-6)
        t = time.perf_counter()
        pixel_view(res, np.asarray(counts[iy, ix], float), iy, ix)     # the computation alone, same pixel again
        compute.append(time.perf_counter() - t)
    naive = []                                  # the same curves computed the plain way (all channels, BandGapFit.model)
    from eelsnb.bandgap import fit_band_gap
    e = energy
    cb = (e >= -3.05) & (e <= 10.25)
    for iy, ix in pix[1:a.picks + 1][:a.baseline_picks]:
        t = time.perf_counter()
        c = np.asarray(counts[iy, ix], float)
        z = res.ensemble.predict_for(c[None], e)[:, 0]
        inel = c[None] - z
        fit = fit_band_gap(inel[:, None, cb], e[cb], resolution=z[:, None, cb], seed=0)
        ok = ~fit.failed[:, 0]
        if ok.any(): np.nanpercentile(fit.model(e[cb])[ok, 0], [50, 16, 84], axis=0)
        np.percentile(z, [50, 16, 84], axis=0); np.percentile(inel, [50, 16, 84], axis=0)
        naive.append(time.perf_counter() - t)
    base = []
    for iy, ix in pix[a.picks + 1:]:
        t = time.perf_counter()
        ex_b = si_explorer(res, counts, pixel=(iy, ix), cache=0)
        base.append(time.perf_counter() - t)
        assert ex_b.figure.data[3].x == (ix,)
    ms = lambda v, q: round(1e3 * float(np.percentile(v, q)), 1)
    out = dict(benchmark="explorer_latency", size=[a.size, a.size], channels=len(energy), replicas=res.n_rep,
               maps=a.maps if a.maps == "full" else f"tiled from {a.tile}x{a.tile}", picks=len(total),
               pick_median_ms=ms(total, 50), pick_p95_ms=ms(total, 95), pixel_view_median_ms=ms(compute, 50),
               pixel_view_p95_ms=ms(compute, 95), baseline="new panel per pick (si_explorer)", baseline_picks=len(base),
               baseline_median_ms=ms(base, 50), baseline_p95_ms=ms(base, 95),
               speedup_median=round(float(np.median(base) / np.median(total)), 1),
               naive_compute="pixel curves on all channels, BandGapFit.model over the fit axis",
               naive_compute_median_ms=ms(naive, 50), naive_compute_p95_ms=ms(naive, 95), target_ms=200,
               meets_target=bool(np.percentile(total, 95) < 0.2), first_panel_s=round(t_build, 2),
               setup_s=dict(si=round(t_si, 1), train=round(t_train, 1), maps=round(t_maps, 1)),
               threads=torch.get_num_threads(), cpu=platform.machine(), load_avg=[round(x, 2) for x in os.getloadavg()])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
