#!/usr/bin/env python
"""SI throughput: ZLP subtraction + band-gap + thickness maps of a spectral image, vectorised vs a per-pixel loop.

A synthetic SI (`eelsnb.synthetic.synthetic_si`, default 64 x 64 pixels x 2048 channels, 1e6 electrons per pixel, two
direct band-gap regions at 1.2 and 2.0 eV, thickness terraces, drift and noise) and one ZLP ensemble of 100 replicas trained on it (`fit_si`, 5 thickness
clusters; the training is not what is measured and can be cached with --cache DIR). Both paths then compute, with
that same ensemble, for every pixel they handle and every replica: the ZLP, the subtracted spectrum, t/lambda
(log-ratio) and the band-gap onset fit (E_bg, b), summarised as median and 68% interval:

- `vectorised`: `eelsnb.image.analyse_image(..., ensemble=ens)` on all pixels: clustering, the condition grid
  (ensemble evaluated once on a grid of conditions, refined to 5% of the ensemble spread), then chunks of pixels
  with every replica of every pixel in one array (`analyse_chunk`). The time includes everything after training.
- `baseline`: a Python loop over pixels, each doing the same with the networks evaluated at its own conditions
  (`ZLPEnsemble.predict_for`) and `analyse_chunk` on that one pixel; run on `--baseline-pixels` pixels spread over
  the SI (all of them would take far too long); its throughput is per pixel.

Each path runs in its own fresh Python process (so `peak_rss_mb` is the vectorised path's own ru_maxrss). On the
baseline's pixels the two paths' medians are compared (they differ by the grid interpolation, < 5% of the ensemble
spread, and by the seeds of the fit windows). Prints one JSON line.

Usage: python benchmarks/si_throughput.py [--size 64] [--replicas 100] [--epochs 500] [--baseline-pixels 48]
                                          [--cache DIR] [--quick]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

WORKER = r'''
import json, resource, sys, time, numpy as np
t_start = time.perf_counter()
path, mode, pixels = sys.argv[1], sys.argv[2], sys.argv[3]
from eelsnb.ensemble import ZLPEnsemble
from eelsnb.image import analyse_image, analyse_chunk
counts = np.load(path + "/counts.npy"); energy = np.load(path + "/energy.npy")
ens = ZLPEnsemble.load(path + "/model")
ny, nx, nE = counts.shape
pix = np.array(json.loads(pixels), int)
flat = counts.reshape(-1, nE)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rss0 = rss()
KW = dict(exciton_windows=(), plasmon_window=None)          # subtraction + band gap + thickness
NAMES = ("band_gap", "exponent", "t_over_lambda")
out = {}
t0, c0 = time.perf_counter(), time.process_time()
if mode == "vectorised":
    res = analyse_image(counts, energy, ensemble=ens, n_clusters=5, seed=0, progress=False, **KW)
    out.update(pixels=ny * nx, seconds=time.perf_counter() - t0, stages=res.seconds, grid=res.grid,
               failed=int(res.n_failed.sum()), fits=int(res.n_failed.size * res.n_rep),
               medians={n: res.maps[n].median.reshape(-1)[pix].tolist() for n in NAMES})
else:
    med = {n: [] for n in NAMES}
    failed = 0
    for p in pix:
        z = ens.predict_for(flat[p:p + 1], energy)                 # (n_rep, 1, n_E): the networks at this pixel
        s, nf, _ = analyse_chunk(flat[p:p + 1], z.astype(np.float32), energy, seed=int(p), **KW)
        for n in NAMES: med[n].append(float(s[n].median[0]))
        failed += int(nf.sum())
    out.update(pixels=len(pix), seconds=time.perf_counter() - t0, failed=failed, fits=len(pix) * ens.n_replicas,
               medians=med)
out["cpu_seconds"] = time.process_time() - c0
out["peak_rss"] = rss()
out["rss_after_load"] = rss0
out["seconds_imports_and_load"] = t0 - t_start
print(json.dumps(out, default=lambda o: o if not hasattr(o, "tolist") else o.tolist()))
'''


def run_worker(path, mode, pixels):
    # -P: the worker imports the eelsnb this interpreter finds (PYTHONPATH, site-packages), not one in the working directory
    r = subprocess.run([sys.executable, "-P", "-c", WORKER, path, mode, json.dumps([int(p) for p in pixels])],
                       capture_output=True, text=True)
    if r.returncode != 0: raise RuntimeError(f"{mode} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def diff_stats(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return dict(median_abs_diff=float(np.median(np.abs(a - b)[ok])) if ok.any() else None,
                both_valid=int(ok.sum()), valid_vectorised=int(np.isfinite(a).sum()), valid_baseline=int(np.isfinite(b).sum()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="SI is size x size pixels (default 64)")
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--epochs", type=int, default=500, help="training steps (not what is measured)")
    p.add_argument("--baseline-pixels", type=int, default=48, help="pixels the per-pixel loop runs on")
    p.add_argument("--cache", type=Path, default=None,
                   help="directory for trained ensembles (one per size/replicas/epochs/seed): loaded when there, else saved")
    p.add_argument("--counts", type=float, default=1e6, help="electrons per pixel of the synthetic SI (default 1e6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="32 x 32 pixels, 20 replicas, 200 epochs, 16 baseline pixels")
    a = p.parse_args(argv)
    if a.quick: a.size, a.replicas, a.epochs, a.baseline_pixels = 32, 20, 200, 16
    import torch
    from eelsnb.synthetic import synthetic_si
    from eelsnb.ensemble import ZLPEnsemble
    from eelsnb.subtract import record_training_axis
    t0 = time.perf_counter()
    si = synthetic_si(shape=(a.size, a.size), band_gaps=(1.2, 2.0), exponent=0.5, total_counts=a.counts, seed=a.seed)
    cache = None if a.cache is None else a.cache / f"si{a.size}_rep{a.replicas}_ep{a.epochs}_counts{a.counts:g}_seed{a.seed}"
    trained = cache is None or not (cache / "model.json").is_file()
    if trained:
        ens = ZLPEnsemble(n_replicas=a.replicas, max_epochs=a.epochs, seed=a.seed, progress_bar=False).fit_si(si, n_clusters=5)
        record_training_axis(ens, si.energy)
        if cache is not None: ens.save(cache)
    else: ens = ZLPEnsemble.load(cache)
    t_prep = time.perf_counter() - t0
    n = a.size * a.size
    pixels = np.unique(np.linspace(0, n - 1, a.baseline_pixels).astype(int))
    with tempfile.TemporaryDirectory() as d:
        np.save(d + "/counts.npy", si.counts); np.save(d + "/energy.npy", si.energy); ens.save(d + "/model")
        vec = run_worker(d, "vectorised", pixels)
        base = run_worker(d, "baseline", pixels)
    v_rate, b_rate = vec["pixels"] / vec["seconds"], base["pixels"] / base["seconds"]
    st = vec["stages"]
    out = dict(benchmark="si_throughput", si=list(si.counts.shape), n_replicas=ens.n_replicas,
               spectra_per_s=round(v_rate, 1), baseline_spectra_per_s=round(b_rate, 2), speedup=round(v_rate / b_rate, 1),
               peak_rss_mb=round(vec["peak_rss"] / 2**20), baseline_peak_rss_mb=round(base["peak_rss"] / 2**20),
               seconds=round(vec["seconds"], 2), cpu_seconds=round(vec["cpu_seconds"], 2),
               spectra_per_cpu_s=round(vec["pixels"] / vec["cpu_seconds"], 1),
               baseline_spectra_per_cpu_s=round(base["pixels"] / base["cpu_seconds"], 2),
               seconds_stages={k: round(float(v), 2) for k, v in st.items() if k in ("cluster", "grid", "chunks")},
               chunks_spectra_per_s=round(vec["pixels"] / float(st["chunks"]), 1),
               baseline_pixels=base["pixels"], baseline_seconds=round(base["seconds"], 2),
               baseline_all_pixels_s_est=round(n / b_rate, 1),
               grid=dict(shape=vec["grid"].get("shape"), nodes=vec["grid"].get("nodes"),
                         error_ratio=round(float(vec["grid"].get("error_ratio", float("nan"))), 4),
                         chunks=vec["grid"].get("chunks"), chunk_pixels=vec["grid"].get("chunk_pixels")),
               failed_fit_fraction=dict(vectorised=round(vec["failed"] / vec["fits"], 4), baseline=round(base["failed"] / base["fits"], 4)),
               same_pixels={k: diff_stats(vec["medians"][k], base["medians"][k]) for k in base["medians"]},
               rss_after_load_mb=round(vec["rss_after_load"] / 2**20),
               trained=trained, epochs=a.epochs if trained else None, prepare_s=round(t_prep, 1),
               threads=torch.get_num_threads(), cpus=os.cpu_count(), load_avg=[round(v, 2) for v in os.getloadavg()],
               machine=platform.machine(), python=platform.python_version())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
