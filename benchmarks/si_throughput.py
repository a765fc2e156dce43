#!/usr/bin/env python
"""ZLP subtraction of a spectral image: condition grid + chunks (eelsnb.subtract) versus the networks at every pixel.

A synthetic SI (`eelsnb.synthetic.synthetic_si`, default 128 x 128 pixels x 2048 channels) and a ZLP ensemble of
100 replicas trained on it with `fit_si` (briefly: the training is not what is measured). Both paths then compute the
ZLP replicas of every pixel they handle and t/lambda per replica and pixel (log-ratio), keeping its median:

- `grid`: `subtract_image` (conditions pass, condition grid refined until the interpolation error is below 5% of the
  ensemble spread, chunked multilinear interpolation in ln I), over all pixels.
- `baseline`: `ZLPEnsemble.predict_for` (every network at every pixel's own conditions, no grid), 64 pixels at a
  time, on `--baseline-pixels` pixels (all of them would take far too long); its throughput is per pixel.

Each path runs in its own fresh Python process, so its peak RSS (`ru_maxrss`) is its own. On the baseline's pixels
the two t/lambda medians are compared. Prints one JSON line; `speedup` includes the grid's fixed cost (conditions pass,
node evaluations, error check), `speedup_chunks_only` is the rate once the grid exists (the limit for large SIs).

Usage: python benchmarks/si_throughput.py [--size 128 --replicas 100 --epochs 100 --baseline-pixels 256] [--quick]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time

import numpy as np

WORKER = r'''
import json, resource, sys, time, numpy as np
path, mode, n_base, max_memory = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
from eelsnb.ensemble import ZLPEnsemble
from eelsnb.subtract import subtract_image
counts = np.load(path + "/counts.npy"); energy = np.load(path + "/energy.npy")
ens = ZLPEnsemble.load(path + "/model")
ny, nx, nE = counts.shape
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = np.unique(np.linspace(0, ny * nx - 1, n_base).astype(int))
flat = counts.reshape(-1, nE)
out = {}
t0 = time.perf_counter()
if mode == "grid":
    it = subtract_image(ens, counts, energy, max_memory=max_memory, reuse=True)
    t1 = time.perf_counter()
    tl = np.empty(ny * nx)
    for ch in it:
        tl[ch.index] = np.median(np.log(ch.counts.sum(-1, dtype=np.float64)[None] / ch.zlp.sum(-1)), 0)
    t2 = time.perf_counter()
    out.update(pixels=ny * nx, seconds=t2 - t0, seconds_conditions_and_grid=t1 - t0, seconds_chunks=t2 - t1,
               nodes=it.grid.n_nodes, grid_shape=list(it.grid.shape), error_ratio=it.grid.error_ratio,
               error_stats=it.grid.error_stats, chunks=len(it), chunk_pixels=it.chunk_pixels, t_over_lambda=tl[base].tolist())
else:
    tl = np.empty(len(base))
    for a in range(0, len(base), 64):
        idx = base[a:a + 64]
        z = ens.predict_for(flat[idx], energy)                      # (n_rep, m, n_E), networks at every pixel
        tl[a:a + 64] = np.median(np.log(flat[idx].sum(-1, dtype=np.float64)[None] / z.sum(-1)), 0)
    out.update(pixels=len(base), seconds=time.perf_counter() - t0, t_over_lambda=tl.tolist())
out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out["rss_after_load"] = rss0
print(json.dumps(out))
'''


def run_worker(path, mode, n_base, max_memory):
    r = subprocess.run([sys.executable, "-c", WORKER, path, mode, str(n_base), str(max_memory)], capture_output=True, text=True)
    if r.returncode != 0: raise RuntimeError(f"{mode} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128, help="SI is size x size pixels")
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--epochs", type=int, default=100, help="training steps (brief: not what is measured)")
    p.add_argument("--baseline-pixels", type=int, default=256)
    p.add_argument("--max-memory", type=float, default=2**30, help="chunk budget of subtract_image (bytes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="64 x 64 pixels, 32 baseline pixels, 40 epochs")
    a = p.parse_args(argv)
    if a.quick: a.size, a.baseline_pixels, a.epochs = 64, 32, 40
    import torch
    from eelsnb.synthetic import synthetic_si
    from eelsnb.ensemble import ZLPEnsemble
    from eelsnb.subtract import record_training_axis
    t0 = time.perf_counter()
    si = synthetic_si(shape=(a.size, a.size), seed=a.seed)
    ens = ZLPEnsemble(n_replicas=a.replicas, max_epochs=a.epochs, seed=a.seed, progress_bar=False).fit_si(si, n_clusters=5)
    record_training_axis(ens, si.energy)
    t_prep = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        np.save(d + "/counts.npy", si.counts); np.save(d + "/energy.npy", si.energy); ens.save(d + "/model")
        grid = run_worker(d, "grid", a.baseline_pixels, a.max_memory)
        base = run_worker(d, "baseline", a.baseline_pixels, a.max_memory)
    tg, tb = np.array(grid.pop("t_over_lambda")), np.array(base.pop("t_over_lambda"))
    gib = lambda v: round(v / 2**30, 3)
    g_rate, b_rate = grid["pixels"] / grid["seconds"], base["pixels"] / base["seconds"]
    out = dict(benchmark="si_throughput", si=list(si.counts.shape), n_replicas=a.replicas, epochs=a.epochs,
               grid=dict(spectra_per_s=round(g_rate, 1), seconds=round(grid["seconds"], 2),
                         seconds_conditions_and_grid=round(grid["seconds_conditions_and_grid"], 2),
                         seconds_chunks=round(grid["seconds_chunks"], 2),
                         chunks_spectra_per_s=round(grid["pixels"] / grid["seconds_chunks"], 1), peak_rss_gib=gib(grid["peak_rss"]),
                         rss_after_load_gib=gib(grid["rss_after_load"]), nodes=grid["nodes"], grid_shape=grid["grid_shape"],
                         error_ratio=round(grid["error_ratio"], 4), chunks=grid["chunks"], chunk_pixels=grid["chunk_pixels"]),
               baseline=dict(spectra_per_s=round(b_rate, 2), pixels=base["pixels"], seconds=round(base["seconds"], 2),
                             peak_rss_gib=gib(base["peak_rss"]), rss_after_load_gib=gib(base["rss_after_load"]),
                             seconds_all_pixels_est=round(grid["pixels"] / b_rate, 1)),
               speedup=round(g_rate / b_rate, 1), speedup_chunks_only=round(grid["pixels"] / grid["seconds_chunks"] / b_rate, 1),
               t_over_lambda_max_abs_diff=float(np.max(np.abs(tg - tb))),
               full_si_replicas_gib=gib(a.replicas * si.counts.size * 4),
               prepare_s=round(t_prep, 1), threads=torch.get_num_threads(), cpus=os.cpu_count(),
               machine=platform.machine(), python=platform.python_version())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
