#!/usr/bin/env python
"""The README's picture of `eelsnb demo`: per WS2 sample, the ZLP-subtracted spectrum (median and 68% band over the
replicas) near the band-gap onset, the band gap's median and 68% interval, and the numbers from results.json.

Usage: python tools/make_demo_figure.py [RESULTS_DIR (default eelsnb_demo)] [--out nbs/images/demo.png]
It reads only what `eelsnb demo` (or `eelsnb spectra`) wrote: results.json and spectra/*.hspy.
"""
import argparse, json, sys
from pathlib import Path

import numpy as np


def load_spectra(d: Path, name: str):
    "An (n, n_E) stack written by SpectraResults.save, and its energy axis (eV)."
    import warnings
    with warnings.catch_warnings():      # hyperspy's deprecation notices of its own lazy signal imports
        warnings.simplefilter("ignore")
        import hyperspy.api as hs
        s = hs.load(str(d / "spectra" / f"{name}.hspy"))
    ax = s.axes_manager.signal_axes[0]
    return np.atleast_2d(np.asarray(s.data, float)), ax.offset + ax.scale * np.arange(ax.size)


def fmt(s: dict, digits: int = 2) -> str:
    "median (+high-median/-median-low), or n/a."
    if not s or s.get("median") is None: return "n/a"
    m, lo, hi = s["median"], s["low"], s["high"]
    return f"{m:.{digits}f} (+{hi - m:.{digits}f}/-{m - lo:.{digits}f})"


def make_figure(results_dir, out, e_range=(0.5, 5.0), dpi=110):
    "Write the PNG `out` from an `eelsnb demo` results directory; returns its path."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d = Path(results_dir)
    if not (d / "results.json").is_file():
        raise SystemExit(f"make_demo_figure: {d}/results.json not found; run `eelsnb demo --out {d}` first.")
    res = json.loads((d / "results.json").read_text())
    samples = res["samples"]
    med, e = load_spectra(d, "inelastic_median")
    lo, _ = load_spectra(d, "inelastic_low")
    hi, _ = load_spectra(d, "inelastic_high")
    counts, _ = load_spectra(d, "counts")
    zlp, _ = load_spectra(d, "zlp_median")
    n = len(samples)
    if med.shape[0] != n: raise SystemExit(f"make_demo_figure: {n} samples in results.json, {med.shape[0]} spectra.")
    cols = 3 if n > 2 else n
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.9 * rows), squeeze=False, sharex=True)
    m = (e >= e_range[0]) & (e <= e_range[1])
    for i, (ax, s) in enumerate(zip(axes.flat, samples)):
        peak = counts[i].max()
        y = lambda a: a[m] / peak * 1e3                                 # per mille of the ZLP peak
        ax.plot(e[m], y(counts[i]), color="0.6", lw=0.8, label="measured")
        ax.plot(e[m], y(zlp[i]), color="tab:orange", lw=0.8, ls=":", label="ZLP (median)")
        ax.fill_between(e[m], y(lo[i]), y(hi[i]), color="tab:blue", alpha=0.3, lw=0)
        ax.plot(e[m], y(med[i]), color="tab:blue", lw=1.2, label="ZLP-subtracted (median, 68%)")
        bg = s.get("band_gap") or {}
        if bg.get("median") is not None:
            ax.axvspan(bg["low"], bg["high"], color="tab:red", alpha=0.15, lw=0)
            ax.axvline(bg["median"], color="tab:red", lw=1.2, ls="--", label="band gap (median, 68%)")
        top = np.nanmax(y(hi[i])[e[m] > 1.2]) if np.any(e[m] > 1.2) else 1.0
        ax.set_ylim(-0.15 * top, 1.6 * top)
        ax.set_title(s["file"], fontsize=9)
        ax.text(0.02, 0.97, f"$E_{{bg}}$ = {fmt(bg)} eV\n$b$ = {fmt(s.get('exponent'))}\n"
                            f"$t/\\lambda$ = {fmt(s.get('t_over_lambda'), 3)}",
                transform=ax.transAxes, va="top", fontsize=8, family="monospace",
                bbox=dict(facecolor="white", alpha=0.8, lw=0))
        if i % cols == 0: ax.set_ylabel("counts / ZLP peak (‰)")
        if i // cols == rows - 1: ax.set_xlabel("energy loss (eV)")
    for ax in list(axes.flat)[n:]: ax.axis("off")
    h, l = axes.flat[0].get_legend_handles_labels()
    fig.legend(h, l, loc="lower center", ncol=len(l), fontsize=8, frameon=False)
    st = res.get("settings", {})
    fig.suptitle(f"eelsnb demo: WS2 nanoflowers (specimen 4), {st.get('n_replicas', '?')} replicas x "
                 f"{st.get('max_epochs', '?')} epochs; median and 68% interval over the replicas", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results_dir", nargs="?", default="eelsnb_demo", help="what `eelsnb demo --out DIR` wrote")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "nbs" / "images" / "demo.png"),
                   help="PNG to write (default: nbs/images/demo.png)")
    a = p.parse_args(argv)
    print(make_figure(a.results_dir, a.out))


if __name__ == "__main__":
    sys.exit(main())
