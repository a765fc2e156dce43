#!/usr/bin/env python
"""Scaling of the large-SI pipeline (eelsnb.large.analyse_large): spectra/s and peak RSS versus the number of spectra,
serial versus a 2-worker dask LocalCluster, and the cost versus the number of replicas.

Inputs are synthetic SIs of 2048 channels written to disk as .zspy first (float32) and opened lazily: a base tile of
`synthetic_si` (a flake on vacuum) repeated over the scan, each tile with its own beam-current factor, assembled as a
dask array and streamed to disk (the cube is never in memory). Every row runs in a fresh Python process, so its peak
RSS (ru_maxrss) is its own; for dask rows the largest worker's peak is reported beside the driver's. A serial row
runs as a user's would, with analyse_large's default of one block thread per core (`threads` in its JSON line); the
dask rows run 2 worker processes of one thread each.

Rows:
- `scale`: analysis='thickness' (read, detector faults, proxy and conditions, clusters, condition grid, ZLP replicas of
  every pixel, t/lambda per replica and its median/16/84%), at 10^4 and 10^5 spectra (10^6 with --sizes 1000), serial and on
  a 2-worker LocalCluster, 100 replicas. The first row trains the ensemble (counted in its time), later rows reuse it.
- `replicas`: analysis='full' (band gap, exponent, t/lambda, excitons, plasmon per replica) on --full-size pixels,
  25/50/100/200 replicas, training included.

- `variant` (with --variants): analysis='full' on --full-size pixels, 100 replicas, training included, with the plasmon
  search left out (`noplasmon`: plasmon_window=None), the vacuum pixels left out (`vacuum`: vacuum_below=0.02), or both
  (`noplasmon_vacuum`), beside the plain full analysis (`full`).

Prints one JSON line per row; writes a log-log plot (cost versus spectra, cost versus replicas) to --plot.
Usage: python benchmarks/si_scale.py [--sizes 100 316] [--full-size 40] [--replicas 25 50 100 200] [--epochs 300]
       [--variants full noplasmon vacuum noplasmon_vacuum] [--plot benchmarks/si_scale.png] [--quick]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

WRITE = r'''
import sys, numpy as np, dask, dask.array as da, warnings
import hyperspy.api as hs
from eelsnb.synthetic import synthetic_si
ny, nx, tile, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
base = synthetic_si((tile, tile), seed=7)
e = base.energy
c0 = base.counts.astype(np.float32)
def block(i, j):
    f = np.float32(1 + 0.02 * np.sin(1.7 * i + 0.9 * j))
    return c0 * f
rows = []
for i in range(-(-ny // tile)):
    cols = [da.from_delayed(dask.delayed(block)(i, j), (tile, tile, len(e)), np.float32) for j in range(-(-nx // tile))]
    rows.append(da.concatenate(cols, 1))
# chunks of `tile` full-width rows, fewer where those would exceed 256 MiB (from 10^6 spectra on): eelsnb.large keeps the
# last two chunk rows decompressed only within ROW_CACHE_BYTES; bigger ones are decompressed again for every thin block
from eelsnb.large import kept_chunk_rows
crow = max(1, min(tile, kept_chunk_rows(nx * len(e) * 4)))
data = da.concatenate(rows, 0)[:ny, :nx].rechunk((crow, nx, len(e)))
s = hs.signals.Signal1D(data).as_lazy()
s.axes_manager[-1].offset, s.axes_manager[-1].scale, s.axes_manager[-1].units = e[0], e[1] - e[0], "eV"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with dask.config.set(scheduler="synchronous"): s.save(path, overwrite=True)
'''

RUN = r'''
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from eelsnb.large import analyse_large
path, out, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.perf_counter()
res = analyse_large(path, out, progress=False, **kw)
dt = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ch = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
import torch
print("RESULT " + json.dumps(dict(seconds=dt, stages=res.seconds, peak_rss=me, peak_rss_child=ch, n_pixels=res.n_pixels, threads=torch.get_num_threads(),
                                  grid_nodes=res.grid.get("nodes"), chunk_pixels=res.grid.get("chunk_pixels"))))
'''


VARIANTS = {"full": {}, "noplasmon": dict(plasmon_window=None), "vacuum": dict(vacuum_below=0.02),
            "noplasmon_vacuum": dict(plasmon_window=None, vacuum_below=0.02)}


def run_row(path, out, kw, timeout):
    # a serial row runs as a user's does: analyse_large's default, one block thread per core (torch's thread count);
    # a dask row's workers get one thread each (OMP_NUM_THREADS=1 is inherited by the LocalCluster's processes)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if kw.get("scheduler"): env["OMP_NUM_THREADS"] = "1"
    # -P: the child imports the eelsnb this interpreter finds (PYTHONPATH, site-packages), not one in the working directory
    r = subprocess.run([sys.executable, "-P", "-c", RUN, str(path), str(out), json.dumps(kw)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not line: raise RuntimeError(r.stdout[-2000:] + r.stderr[-3000:])
    return json.loads(line[-1][7:])


def write_si(ny, nx, tile, path):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-P", "-c", WRITE, str(ny), str(nx), str(tile), str(path)], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True)
    return time.perf_counter() - t


def plot(rows, path):
    "Log-log figure: cost versus spectra (scale rows) and versus replicas (replica rows)."
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for mode, mk in (("serial", "o-"), ("dask", "s--")):
        rr = sorted((r for r in rows if r["row"] == "scale" and r["mode"] == mode), key=lambda r: r["spectra"])
        if rr:
            ax[0].loglog([r["spectra"] for r in rr], [r["seconds"] for r in rr], mk, label=f"{mode}: total")
            ax[0].loglog([r["spectra"] for r in rr], [r["stages"]["pass2"] for r in rr], mk, alpha=0.5, label=f"{mode}: pass 2")
    ax[0].set_xlabel("spectra"); ax[0].set_ylabel("seconds"); ax[0].set_title("thickness analysis, 100 replicas"); ax[0].legend()
    rr = sorted((r for r in rows if r["row"] == "replicas"), key=lambda r: r["replicas"])
    if rr:
        ax[1].loglog([r["replicas"] for r in rr], [r["seconds"] for r in rr], "o-", label="total (training included)")
        ax[1].loglog([r["replicas"] for r in rr], [r["stages"]["pass2"] for r in rr], "s--", label="pass 2 (maps)")
        ax[1].set_xlabel("replicas"); ax[1].set_ylabel("seconds"); ax[1].set_title(f"full analysis, {rr[0]['spectra']} spectra"); ax[1].legend()
    fig.tight_layout(); fig.savefig(path, dpi=100)


def _rows(a, wd:Path)->list:
    "The benchmark rows (printed as they come), with the SIs and runs in `wd`."
    rows, model = [], a.model
    for n in a.sizes:
        path = wd / f"si{n}.zspy"
        tw = write_si(n, n, a.tile, path) if not path.exists() else 0.0
        for mode in ["serial"] + (["dask"] if n in a.dask_sizes else []):
            kw = dict(analysis="thickness", seed=0, n_clusters=5)
            if model is None: kw.update(n_replicas=100, max_epochs=a.epochs)
            else: kw.update(model=str(model))
            if mode == "dask": kw.update(scheduler="local", n_workers=2)
            out = wd / f"run{n}-{mode}"
            r = run_row(path, out, kw, a.timeout)
            if model is None: model = out
            row = dict(row="scale", mode=mode, threads=r["threads"], spectra=n * n, channels=2048, replicas=100, analysis="thickness",
                       trained=("model" not in kw), seconds=round(r["seconds"], 2),
                       stages={k: round(v, 2) for k, v in r["stages"].items()},
                       spectra_per_s=round(n * n / r["seconds"], 1),
                       spectra_per_s_pass2=round(n * n / r["stages"]["pass2"], 1),
                       peak_rss_gib=round(r["peak_rss"] / 2**30, 3), peak_rss_worker_gib=round(r["peak_rss_child"] / 2**30, 3) if mode == "dask" else None,
                       grid_nodes=r["grid_nodes"], chunk_pixels=r["chunk_pixels"], zspy_write_seconds=round(tw, 1))
            print(json.dumps(row), flush=True); rows.append(row)
    if a.replicas:
        path = wd / f"si{a.full_size}.zspy"
        if not path.exists(): write_si(a.full_size, a.full_size, min(a.tile, a.full_size), path)
        for R in a.replicas:
            kw = dict(analysis="full", seed=0, n_clusters=5, n_replicas=R, max_epochs=a.epochs)
            r = run_row(path, wd / f"full{a.full_size}-R{R}", kw, a.timeout)
            n = a.full_size ** 2
            row = dict(row="replicas", mode="serial", threads=r["threads"], spectra=n, channels=2048, replicas=R, analysis="full", trained=True,
                       seconds=round(r["seconds"], 2), stages={k: round(v, 2) for k, v in r["stages"].items()},
                       spectra_per_s=round(n / r["seconds"], 1), spectra_per_s_pass2=round(n / r["stages"]["pass2"], 1),
                       peak_rss_gib=round(r["peak_rss"] / 2**30, 3), grid_nodes=r["grid_nodes"], chunk_pixels=r["chunk_pixels"])
            print(json.dumps(row), flush=True); rows.append(row)
    if a.variants:
        path = wd / f"si{a.full_size}.zspy"
        if not path.exists(): write_si(a.full_size, a.full_size, min(a.tile, a.full_size), path)
        for v in a.variants:
            kw = dict(analysis="full", seed=0, n_clusters=5, n_replicas=100, max_epochs=a.epochs, **VARIANTS[v])
            r = run_row(path, wd / f"variant{a.full_size}-{v}", kw, a.timeout)
            n = a.full_size ** 2
            row = dict(row="variant", variant=v, settings=VARIANTS[v], mode="serial", threads=r["threads"], spectra=n, channels=2048,
                       replicas=100, analysis="full", trained=True, seconds=round(r["seconds"], 2),
                       stages={k: round(v_, 2) for k, v_ in r["stages"].items()}, spectra_per_s=round(n / r["seconds"], 1),
                       spectra_per_s_pass2=round(n / r["stages"]["pass2"], 1), peak_rss_gib=round(r["peak_rss"] / 2**30, 3))
            print(json.dumps(row), flush=True); rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 316], help="square scans (pixels per side) of the thickness rows; none: no such rows")
    ap.add_argument("--dask-sizes", type=int, nargs="*", default=[100, 316], help="sizes also run on a 2-worker LocalCluster")
    ap.add_argument("--full-size", type=int, default=40, help="side of the scan of the replica rows (full analysis)")
    ap.add_argument("--replicas", type=int, nargs="*", default=[25, 50, 100, 200])
    ap.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                    help="rows of the full analysis at --full-size, 100 replicas, with searches or pixels left out")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--plot", default="benchmarks/si_scale.png")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--model", default=None, help="a trained model (or run) directory for the scale rows (no training)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--replot", nargs="*", default=None, help="only redraw the plot from files of JSON lines printed earlier")
    a = ap.parse_args(argv)
    if a.replot:
        rows = [json.loads(l) for f in a.replot for l in open(f) if l.startswith('{"row"')]
        plot(rows, a.plot); print(json.dumps(dict(plot=str(a.plot)))); return rows
    if a.quick: a.sizes, a.dask_sizes, a.full_size, a.replicas, a.epochs, a.tile = [48], [48], 24, [10, 20], 60, 24
    # without --workdir the SIs (0.8 GB at 316 x 316) and the runs go to a temporary directory that is removed at the end,
    # however the run ends; a --workdir is kept (and its SIs reused by the next run)
    wd = Path(a.workdir or tempfile.mkdtemp(prefix="si_scale-"))
    wd.mkdir(parents=True, exist_ok=True)
    try: rows = _rows(a, wd)
    finally:
        if a.workdir is None: shutil.rmtree(wd, ignore_errors=True)
    if a.plot and rows: plot(rows, a.plot); print(json.dumps(dict(plot=str(a.plot))))
    return rows


if __name__ == "__main__":
    main()
