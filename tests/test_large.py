"""Integration tests of eelsnb.large: kill and resume, a 2-worker LocalCluster against the serial path, detector faults.

One small synthetic SI (48 x 48 pixels, 512 channels) written to disk as .zspy; a reference run (serial, never
interrupted) trains its own small ensemble; the other runs are compared with it map by map, for exact equality.
"""
import json, os, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
E = np.arange(-3.0, 9.8, 0.025)
KW = dict(n_clusters=3, n_replicas=10, max_epochs=150, seed=0, plasmon_window=None, progress=False, rows=4)


def _write_zspy(counts, path):
    import hyperspy.api as hs
    s = hs.signals.Signal1D(np.asarray(counts, np.float32))
    s.axes_manager[-1].offset, s.axes_manager[-1].scale, s.axes_manager[-1].units = E[0], E[1] - E[0], "eV"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); s.save(str(path), chunks=(8, 48, 512))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from eelsnb.synthetic import synthetic_si
    from eelsnb.large import analyse_large
    root = tmp_path_factory.mktemp("large")
    si = synthetic_si((48, 48), energy=E, seed=0)
    path = _write_zspy(si.counts, root / "si.zspy")
    t0 = time.perf_counter()
    ref = analyse_large(path, root / "ref", **KW)
    return dict(root=root, si=si, path=path, ref=ref, ref_seconds=time.perf_counter() - t0)


def _same_maps(a, b, mask=None):
    """Every map of two runs on the `mask` pixels (all by default), bit for bit with NaN where NaN, the band-gap fit's
    included: a pixel's numbers depend on its own spectrum alone (`fit_band_gap` with resolution kernels from each
    pixel's own kernel-lattice node, frames of its own window length, products in fixed-size row blocks), not on the
    other pixels of its chunk, the worker that ran it or the number of threads. Returns the number of values compared."""
    m = np.ones(a.shape, bool) if mask is None else mask
    n = 0
    assert sorted(a.maps) == sorted(b.maps)
    for k in a.maps:
        for w in range(4):
            x, y = np.asarray(a.maps[k][w])[m], np.asarray(b.maps[k][w])[m]
            np.testing.assert_array_equal(x, y, err_msg=f"{k}[{w}]")
            n += x.size
    np.testing.assert_array_equal(a.n_failed[m], b.n_failed[m])
    return n


RUN = textwrap.dedent("""
    import sys, json
    from eelsnb.large import analyse_large
    kw = json.loads(sys.argv[3])
    analyse_large(sys.argv[1], sys.argv[2], **kw)
""")


def test_kill_and_resume(data):
    "SIGKILL in the middle of pass 2; the same command resumes, skips the finished blocks and gives the reference maps."
    import zarr
    from eelsnb.large import load_large
    out = data["root"] / "killed"
    kw = dict(KW, model=str(data["root"] / "ref"), reuse_grid=True)
    kw.pop("n_replicas"); kw.pop("max_epochs")
    cmd = [sys.executable, "-c", RUN, str(data["path"]), str(out), json.dumps(kw)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done_path = out / "work/maps.zarr"
    t_end = time.time() + 120
    n_done = 0
    while time.time() < t_end and proc.poll() is None:
        if (done_path / "done").exists():
            try: n_done = int(np.sum(zarr.open_group(str(done_path), mode="r")["done"][:]))
            except Exception: n_done = 0
            if n_done >= 3: break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (out / "results.json").exists()
    g = zarr.open_group(str(done_path), mode="r")
    done = np.flatnonzero(g["done"][:])
    n_blocks = len(g["done"])
    assert 3 <= len(done) < n_blocks, (done, n_blocks)
    # the chunk files of the finished blocks must not be written again
    stamp = {b: (done_path / "band_gap__median" / f"{b}.0").stat().st_mtime_ns for b in done}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    t_resume = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for b, t in stamp.items(): assert (done_path / "band_gap__median" / f"{b}.0").stat().st_mtime_ns == t, b
    res = load_large(out)
    assert res.seconds["blocks_done_before"] == len(done)
    n = _same_maps(res, data["ref"])
    print(f"\n{n} map values identical to the reference\nkilled after {len(done)} of {n_blocks} blocks; resume took {t_resume:.1f} s (process start included); "
          f"the uninterrupted reference run took {data['ref_seconds']:.1f} s")


def test_local_cluster_equals_serial(data):
    "Pass 1 and pass 2 on a 2-worker LocalCluster (processes, 1 thread each): the same maps as the serial run, bit for bit."
    from eelsnb.large import analyse_large
    t0 = time.perf_counter()
    kw = dict(KW, model=str(data["root"] / "ref"), reuse_grid=True)   # the reference's model: no second training
    kw.pop("n_replicas"); kw.pop("max_epochs")
    res = analyse_large(data["path"], data["root"] / "cluster", scheduler="local", n_workers=2, **kw)
    dt = time.perf_counter() - t0
    _same_maps(res, data["ref"])
    np.testing.assert_array_equal(res.clusters.labels, data["ref"].clusters.labels)
    n = sum(int(np.isfinite(s.median).sum()) for s in res.maps.values())
    print(f"\nLocalCluster (2 workers): {dt:.1f} s, {n} finite map values identical to the serial run, every map")


def test_faults(data):
    "Injected faults: each found and counted, masked or repaired; clean pixels' maps identical to the fault-free run."
    from eelsnb.large import analyse_large
    from eelsnb.quality import FLAGS
    si = data["si"]
    x = si.counts.astype(np.float32).copy()
    ny, nx, nE = x.shape
    rng = np.random.default_rng(5)
    inner = [(y, xx) for y in range(3, ny - 3, 3) for xx in range(3, nx - 3, 3)]
    pick = [inner[i] for i in rng.choice(len(inner), 26, replace=False)]
    kinds = dict(dead=pick[0:3], hot=pick[3:6], spikes=pick[6:10], saturated=pick[10:13], empty=pick[13:16],
                 nan_few=pick[16:19], nan_many=pick[19:22], inf=pick[22:24])
    for y, xx in kinds["dead"]: x[y, xx] *= 0.02
    for y, xx in kinds["hot"]: x[y, xx] *= 30
    for y, xx in kinds["spikes"]: x[y, xx, rng.integers(150, 500)] += 3000
    for y, xx in kinds["saturated"]: x[y, xx] = np.minimum(x[y, xx], 0.6 * x[y, xx].max())
    for y, xx in kinds["empty"]: x[y, xx] = 0
    for y, xx in kinds["nan_few"]: x[y, xx, rng.integers(150, 500)] = np.nan
    for y, xx in kinds["nan_many"]: x[y, xx, 200:260] = np.nan
    for y, xx in kinds["inf"]: x[y, xx, 300:310] = np.inf
    path = _write_zspy(x, data["root"] / "faulty.zspy")
    kw = dict(KW, model=str(data["root"] / "ref"), reuse_grid=True)
    kw.pop("n_replicas"); kw.pop("max_epochs")
    res = analyse_large(path, data["root"] / "faulty", **kw)
    q = res.quality
    flag = lambda k: (q & FLAGS[k]) > 0
    at = lambda k: tuple(np.array(kinds[k]).T)
    # every injected fault is found where it was put, with its flag
    assert flag("dead")[at("dead")].all() and flag("hot")[at("hot")].all()
    assert flag("spikes")[at("spikes")].all() and flag("saturated")[at("saturated")].all()
    assert flag("empty")[at("empty")].all()
    for k in ("nan_few", "nan_many", "inf"): assert flag("nonfinite")[at(k)].all(), k
    injected = np.zeros((ny, nx), bool)
    for v in kinds.values(): injected[tuple(np.array(v).T)] = True
    # no clean pixel is flagged (the clean SI raises no flag at all)
    assert int(data["ref"].quality.sum()) == 0
    false_flags = int(((q > 0) & ~injected).sum())
    assert false_flags == 0, false_flags
    c = res.quality_counts
    for k, kk in (("dead", "dead"), ("hot", "hot"), ("spikes", "spikes"), ("saturated", "saturated"), ("empty", "empty")):
        assert c[k] == len(kinds[kk]), (k, c[k])
    assert c["nonfinite"] == 8
    # masked pixels: NaN in every map with n_valid == 0 (flagged, never a silent NaN); repaired ones are analysed
    masked = injected.copy()
    for k in ("spikes", "nan_few"): masked[at(k)] = False
    assert c["masked"] == int(masked.sum())
    for n, s in res.maps.items():
        assert np.isnan(s.median[masked]).all() and (s.n_valid[masked] == 0).all(), n
    tl, tl0 = res.maps["t_over_lambda"].median, data["ref"].maps["t_over_lambda"].median
    rep = ~masked & injected
    assert np.isfinite(tl[rep]).all() and np.abs(tl[rep] - tl0[rep]).max() < 2e-3
    # every other pixel: the maps of the run without faults, bit for bit, though the faulty pixels share blocks and
    # chunks with clean ones (each pixel's analysis depends on its own spectrum alone)
    n = _same_maps(res, data["ref"], mask=~injected)
    print(f"\nfaults: {c}; {int((~injected).sum())} clean pixels identical in every map ({n} values); repaired pixels' t/lambda within "
          f"{np.abs(tl[rep] - tl0[rep]).max():.2e} of the fault-free run")


def test_second_run_is_locked_out(data):
    "A second run into a directory held by a running one stops at once with the first one's pid; nothing is touched."
    out = data["root"] / "locked"
    code = f"from eelsnb.store import RunLock; import time; RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        from eelsnb.large import analyse_large
        from eelsnb.store import RunLockedError
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            analyse_large(data["path"], out, **KW)
        assert [p.name for p in out.iterdir()] == [".eelsnb.lock"]
    finally:
        proc.kill(); proc.wait()


def test_vacuum_below(data):
    "vacuum_below: pixels whose median t/lambda lies below it keep their t/lambda only; every other pixel's maps are the reference's."
    from eelsnb.large import analyse_large
    from eelsnb.image import VACUUM_REASON
    kw = dict(KW, model=str(data["root"] / "ref"), reuse_grid=True)
    kw.pop("n_replicas"); kw.pop("max_epochs")
    res = analyse_large(data["path"], data["root"] / "vacuum", vacuum_below=0.05, **kw)
    ref = data["ref"]
    vac = ref.maps["t_over_lambda"].median < 0.05
    assert vac.any() and (~vac).any() and vac[data["si"].vacuum].mean() > 0.99
    _same_maps(res, ref, mask=~vac)
    for k in range(4): np.testing.assert_array_equal(res.maps["t_over_lambda"][k], ref.maps["t_over_lambda"][k])
    for n, s in res.maps.items():
        if n != "t_over_lambda": assert np.isnan(s.median[vac]).all() and (s.n_valid[vac] == 0).all(), n
    assert res.failed_by_reason[VACUUM_REASON] == int(vac.sum()) * res.n_rep
    assert json.loads((data["root"] / "vacuum/results.json").read_text())["settings"]["analysis_kw"]["vacuum_below"] == 0.05


def test_workers_start_without_trim_threshold():
    """dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers, which turns off glibc's adaptive mmap threshold
    and makes the per-chunk numpy work about 2x slower: eelsnb's LocalCluster starts its workers without it, and workers
    of a given scheduler that have it get a warning saying how to start them."""
    from dask.distributed import Client, LocalCluster
    from eelsnb.large import _client, _check_workers, _worker_trim
    with _client("local", 2) as c:
        vals = c.run(_worker_trim)
    assert len(vals) == 2 and all(v is None for v in vals.values()), vals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cl = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=0)
    try:
        with Client(cl) as c:
            assert all(v is not None for v in c.run(_worker_trim).values())   # dask's default, as on a user's cluster
            with pytest.warns(UserWarning, match="MALLOC_TRIM_THRESHOLD_: null"):
                _check_workers(c)
    finally: cl.close()


def test_lazy_rows_from_kept_chunk_rows(data):
    """LazySI.rows serves blocks thinner than the file's chunks from the last two chunk rows read: the same arrays as a
    direct read, across chunk edges, as new arrays (a caller may write into them), never more than two chunk rows kept."""
    from eelsnb.large import open_si
    src = open_si(data["path"])
    ys = src._chunk_rows()
    assert ys is not None and ys[1] == 8   # the fixture's .zspy has 8-row chunks
    for a, b in [(0, 4), (4, 8), (6, 13), (13, 14), (0, 48), (47, 48), (2, 3)]:
        np.testing.assert_array_equal(src.rows(a, b), src._read(a, b))
        assert 1 <= len(src._cache) <= 2
    x = src.rows(0, 4); x[:] = -1
    assert (src.rows(0, 4) != -1).all()


def test_oversized_chunk_rows_warn_and_the_advice_works(data, monkeypatch, tmp_path):
    """A file whose chunk rows are too large to keep decompressed, read in thinner blocks, would decompress each chunk
    once per block: `warn_chunking` says so (analyse_large calls it before any work), and saving the file with the rows
    it suggests silences it; files whose chunk rows are kept, or no larger than a block, do not warn."""
    import re
    import hyperspy.api as hs
    import eelsnb.large as L
    src = L.open_si(data["path"])                                   # 8-row chunks of 48 x 512 float32: 786 KiB a chunk row
    assert not L.warn_chunking(src, 4)                              # kept (two chunk rows within ROW_CACHE_BYTES)
    monkeypatch.setattr(L, "ROW_CACHE_BYTES", 2**20)                 # now two 8-row chunk rows no longer fit
    assert not L.warn_chunking(src, 8)                              # blocks as thick as the chunks: each read once
    with pytest.warns(UserWarning, match=r"chunks of 8 scan rows .* each block of 4 rows decompresses its chunk again") as w:
        assert L.warn_chunking(src, 4)
    m = re.search(r"chunks=\((\d+), 48, 512\)", str(w[0].message))
    assert m and int(m.group(1)) == 2**20 // 2 // (48 * 512 * 4)   # 5 rows: two of them within the budget
    new = tmp_path / "rechunked.zspy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); hs.load(str(data["path"]), lazy=True).save(str(new), chunks=(int(m.group(1)), 48, 512))
    src2 = L.open_si(new)
    np.testing.assert_array_equal(src2.rows(0, 48), src.rows(0, 48))
    with warnings.catch_warnings():
        warnings.simplefilter("error"); assert not L.warn_chunking(src2, 4)
    arr = L.open_si(np.asarray(data["si"].counts, np.float32), energy=E)   # in memory: nothing to decompress
    assert not L.warn_chunking(arr, 1)


def test_overwrite_keeps_the_users_files_and_the_old_run_until_the_new_one_is_complete(data):
    """overwrite=True replaces eelsnb's own results, nothing else: a directory of other files, the input SI inside the
    output directory and a user's file beside earlier results are refused with nothing touched (no lock file either).
    A finished run being replaced stays whole and loadable while the new one works in a hidden sibling, also when the
    new one is killed with SIGKILL; the same command then resumes it and puts it in place."""
    import shutil, zarr
    from eelsnb.large import analyse_large, load_large
    root = data["root"]
    kw = dict(KW, model=str(root / "ref"), reuse_grid=True)
    kw.pop("n_replicas"); kw.pop("max_epochs")
    mine = root / "mine"; (mine / "sub").mkdir(parents=True); (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds no eelsnb run \(notes.txt, sub\); it is not cleared even with overwrite"):
        analyse_large(data["path"], mine, overwrite=True, **kw)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "sub"]
    proj = root / "proj"; proj.mkdir(); shutil.copytree(data["path"], proj / "si.zspy")
    with pytest.raises(ValueError, match="contains the input"):
        analyse_large(proj / "si.zspy", proj, overwrite=True, **kw)
    assert sorted(p.name for p in proj.iterdir()) == ["si.zspy"]
    old = root / "old"; shutil.copytree(root / "ref", old)
    (old / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"\(notes.txt\) that overwrite would delete"):
        analyse_large(data["path"], old, overwrite=True, **dict(kw, seed=1))
    (old / "notes.txt").unlink()
    before = (old / "results.json").read_bytes()
    # the replacing run (another seed: another fingerprint), killed in pass 2
    cmd = [sys.executable, "-c", RUN, str(data["path"]), str(old), json.dumps(dict(kw, seed=1, overwrite=True))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stage = root / ".old.replacing"
    t_end = time.time() + 120
    while time.time() < t_end and proc.poll() is None:
        try:
            if int(np.sum(zarr.open_group(str(stage / "work/maps.zarr"), mode="r")["done"][:])) >= 1: break
        except Exception: pass
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert (old / "results.json").read_bytes() == before and stage.is_dir()
    _same_maps(load_large(old), data["ref"])                                 # the old run, whole
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    new = load_large(old)
    assert new.seconds["blocks_done_before"] >= 1 and new.settings["seed"] == 1
    assert json.loads((old / "results.json").read_text())["fingerprint"] != json.loads(before)["fingerprint"]
    assert not [p.name for p in root.iterdir() if p.name.startswith(".old")]   # no staging or old directory left


def test_damaged_results_json_names_the_way_back(data):
    "A finished run whose results.json is damaged: the same command names the file and the remedy; after it, the maps come back unchanged."
    import shutil
    from eelsnb.large import analyse_large
    out = data["root"] / "damaged"
    shutil.copytree(data["root"] / "ref", out)
    (out / "results.json").write_text('{"shape": [8,')
    with pytest.raises(ValueError, match=r"results.json: not valid JSON .* delete .*results.json and rerun the same command"):
        analyse_large(data["path"], out, **KW)
    (out / "results.json").unlink()
    _same_maps(analyse_large(data["path"], out, **KW), data["ref"])
