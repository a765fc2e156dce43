"""Ensemble training across processes (Lightning DDP, gloo on CPU) and resuming a killed training from its checkpoint.

Both need real processes, so each case runs a small script in a subprocess (DDP's spawn needs a `__main__` guard)."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest

COMMON = """
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from eelsnb.io import load_ws2
from eelsnb.ensemble import ZLPEnsemble
ws = load_ws2(4)
E = ws.energy[(ws.energy > -1) & (ws.energy < 3)]
def fit(**kw):
    return ZLPEnsemble(progress_bar=False, seed=2, **kw).fit_spectra(ws.vacuum_counts[:2], ws.energy, dE1=1.5, dE2=6.0)
def pred(ens):
    return ens.predict(E, ens.spectrum_conditions(ws.vacuum_counts[2:3], ws.energy), log=True)
"""

def _run(code, tmp_path, name, timeout=600):
    script = tmp_path / f"{name}.py"
    script.write_text(COMMON + textwrap.dedent(code))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

def test_ddp_two_processes_match_one(tmp_path):
    "Two gloo processes, each on half the points, train the same ensemble as one process on all of them."
    _run("""
    def main():
        kw = dict(n_replicas=16, max_epochs=60, precision="64-true") # float64: the comparison is not blurred by float32 rounding
        one, two = fit(**kw), fit(devices=2, accelerator="cpu", **kw)
        p1, p2 = pred(one), pred(two)
        np.savez(sys.argv[0] + ".npz", p1=p1, p2=p2, c1=one.chi2["valid"], c2=two.chi2["valid"],
                 b1=one.best_epoch, b2=two.best_epoch, h2=len(two.history))
    if __name__ == "__main__": main()
    """, tmp_path, "ddp")
    d = np.load(tmp_path / "ddp.py.npz")
    spread = np.median(np.std(d["p1"], 0))
    assert np.abs(d["p1"] - d["p2"]).max() < 1e-4 * spread, (np.abs(d["p1"] - d["p2"]).max(), spread)
    np.testing.assert_allclose(d["c2"], d["c1"], rtol=1e-5)
    np.testing.assert_array_equal(d["b1"], d["b2"])
    assert d["h2"] >= 2, "the training history comes back from the worker processes"
    # what a user compares: the median and the 68% band, far inside the replica spread
    q1, q2 = np.percentile(d["p1"], [16, 50, 84], 0), np.percentile(d["p2"], [16, 50, 84], 0)
    assert np.abs(q1 - q2).max() < 0.01 * spread

def test_killed_training_resumes_from_checkpoint(tmp_path):
    "SIGKILL a fit that keeps checkpoints; the same call resumes from the last one and ends where an uninterrupted fit ends."
    ck = tmp_path / "ckpt"
    code = f"""
    kw = dict(n_replicas=8, max_epochs=int(sys.argv[1]), checkpoint_every=25)
    if sys.argv[2] == "ckpt": kw["checkpoint_dir"] = {str(ck)!r}
    ens = fit(**kw)
    np.save(sys.argv[3], pred(ens))
    json.dump(dict(resumed_from=ens.resumed_from), open(sys.argv[3] + ".json", "w"))
    """
    script = tmp_path / "resume.py"
    script.write_text(COMMON + textwrap.dedent(code))
    n = 600
    # the first run is killed as soon as a checkpoint past step 100 is on disk
    proc = subprocess.Popen([sys.executable, str(script), str(n), "ckpt", str(tmp_path / "killed.npy")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0, seen = time.time(), None
    while time.time() - t0 < 300 and proc.poll() is None:
        if (ck / "last.ckpt").exists() and (ck / "last.ckpt").stat().st_mtime > t0 + 0.0:
            seen = time.time()
            time.sleep(0.5)
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the training ended before it could be killed; raise max_epochs"
    assert seen is not None, "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (tmp_path / "killed.npy").exists()
    assert [p.name for p in ck.iterdir() if p.name.endswith(".partial")] == [], "no half-written checkpoint is left behind"
    # resume with the same command
    r = subprocess.run([sys.executable, str(script), str(n), "ckpt", str(tmp_path / "resumed.npy")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "resumed.npy.json").read_text())
    assert info["resumed_from"] is not None and 0 < info["resumed_from"] < n, info
    assert not (ck / "last.ckpt").exists(), "a finished training removes its checkpoint"
    # an uninterrupted run without checkpoints
    r = subprocess.run([sys.executable, str(script), str(n), "plain", str(tmp_path / "plain.npy")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "plain.npy")
    spread = np.median(np.std(b, 0))
    assert np.abs(a - b).max() < 1e-3 * spread, (np.abs(a - b).max(), spread)

def test_checkpoint_of_other_training_is_refused(tmp_path):
    from eelsnb.ensemble import ZLPEnsemble, _checkpoint_for
    from eelsnb.io import load_ws2
    from eelsnb.replicas import training_set_from_spectra
    ws = load_ws2(4)
    ts = training_set_from_spectra(ws.vacuum_counts[:2], ws.energy, 1.5, 6.0, n_replicas=4, seed=0)
    s = ZLPEnsemble(n_replicas=4, checkpoint_dir=tmp_path).settings
    assert _checkpoint_for(s, ts) is None
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert _checkpoint_for(s, ts) == str(tmp_path / "last.ckpt")
    s2 = dict(s, lr=0.01)
    with pytest.raises(ValueError, match="another training"):
        _checkpoint_for(s2, ts)
