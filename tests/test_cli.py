"""The `eelsnb` command: options and help, one-line errors, --out safety, and real runs through `main`
(spectra on the bundled WS2 data, image on a small synthetic SI saved as .hspy, the demo's wiring)."""
import errno, json, subprocess, sys, types
from pathlib import Path

import numpy as np
import pytest

from eelsnb import cli
from eelsnb.cli import build_parser, demo_files, main
from eelsnb.io import data_dir, save, to_signal

WS2 = data_dir() / "ws2" / "specimen4"
ERANGE = ["--energy-range", "-4.054", "45.471"]
SUMMARY = {"median", "low", "high"}
SMALL = ["--replicas", "16", "--epochs", "400"]


def run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err):
    "stderr without the progress lines: what a user reads as the error."
    return [l for l in err.splitlines() if not l.startswith("eelsnb [") and l.strip()]


def assert_one_line_error(rc, err, *words):
    lines = error_lines(err)
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("eelsnb: error: "), err
    assert "Traceback" not in err
    for w in words: assert w in lines[0], (w, lines[0])


def check_summary(s, name):
    assert isinstance(s, dict) and SUMMARY <= set(s), (name, s)
    m, lo, hi = (float(s[k]) for k in ("median", "low", "high"))
    assert np.isfinite([m, lo, hi]).all(), (name, s)
    assert lo <= m <= hi, (name, s)
    return m, lo, hi


def check_report(path, n_min=1):
    h = Path(path).read_text()
    assert h.startswith("<!DOCTYPE html>")
    n_div = h.count('class="plotly-graph-div"')
    assert n_div >= n_min, n_div
    # plotly.js embedded exactly once (the bundle defines window.Plotly once)
    assert h.count("plotly.js v") == 1 or h.count("Plotly=") >= 1
    assert h.count('<script type="text/javascript">/**') <= 1
    return h


# ---------------------------------------------------------------- options and help

@pytest.mark.parametrize("command, options", [
    ("spectra", ["--vacuum", "--sample", "--energy-range", "--replicas", "--epochs", "--seed", "--out", "--overwrite",
                 "--quiet", "--debug", "--dE1", "--dE2", "--window", "--exponent", "--onset-model", "--calibrate", "--no-calibrate", "--vacuum-dE1",
                 "--exciton", "--no-excitons", "--plasmon-window", "--no-plasmon", "--model"]),
    ("image", ["SI_FILE", "--clusters", "--replicas", "--epochs", "--seed", "--out", "--overwrite", "--quiet",
               "--debug", "--max-memory", "--vacuum-below", "--exciton", "--no-excitons", "--plasmon-window", "--no-plasmon", "--model"]),
    ("demo", ["--out", "--replicas", "--epochs", "--seed", "--overwrite", "--quiet", "--debug", "--onset-model", "--calibrate", "--no-calibrate", "--vacuum-dE1"]),
])
def test_help_explains_every_option(capsys, command, options):
    rc, out, _ = run(capsys, [command, "--help"])
    assert rc == 0
    for o in options: assert o in out, o
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices).choices[command]
    for a in sub._actions:
        if a.dest == "help": continue
        assert a.help and ("default" in a.help or "required" in a.help or not a.option_strings), a.dest
        for o in a.option_strings: assert o in out, o
    assert "%%" not in out


def test_version_and_console_script():
    import eelsnb
    exe = Path(sys.executable).with_name("eelsnb")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "eelsnb.cli"]
    r = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"eelsnb {eelsnb.__version__}", r
    r = subprocess.run(cmd + ["spectra", "--sample", "nope.dm4", "--out", "x", "--replicas", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--replicas" in r.stderr and "Traceback" not in r.stderr, r


def test_demo_defaults_are_the_real_thing():
    a = build_parser().parse_args(["demo"])
    assert (a.replicas, a.epochs, a.seed, str(a.out)) == (100, 1000, 0, "eelsnb_demo")
    assert a.onset_model == "excitons"                      # the WS2 excitons sit on the onset
    assert build_parser().parse_args(["spectra", "--sample", "s", "--out", "o"]).onset_model == "power"
    vac, samp, rng = demo_files(4)
    assert [p.name for p in vac] == ["vacuum_17.txt", "vacuum_22.txt", "vacuum_23.txt"]
    assert [p.name for p in samp] == [f"sample_{i}.txt" for i in (14, 15, 16, 19, 20, 21)]
    assert rng == (-4.054, 45.471) and all(p.is_file() for p in vac + samp)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("argv, words", [
    (["spectra", "--sample", "x.txt", "--out", "o", "--epochs", "0"], ["--epochs"]),
    (["spectra", "--sample", "x.txt", "--out", "o", "--energy-range", "1"], ["--energy-range"]),
    (["spectra", "--out", "o"], ["--sample"]),
    (["image", "si.hspy", "--out", "o", "--clusters", "two"], ["--clusters"]),
])
def test_usage_errors_exit_2(capsys, argv, words):
    rc, _, err = run(capsys, argv)
    assert rc == 2 and "Traceback" not in err
    for w in words: assert w in err


def test_bad_files_exit_2_with_one_line(capsys, tmp_path):
    out = tmp_path / "out"
    rc, _, err = run(capsys, ["spectra", "--sample", tmp_path / "missing.dm4", "--out", out])
    assert_one_line_error(rc, err, "missing.dm4", "no such file")
    junk = tmp_path / "junk.dm4"; junk.write_bytes(b"\x00" * 100)
    rc, _, err = run(capsys, ["spectra", "--sample", junk, "--out", out])
    assert_one_line_error(rc, err, "junk.dm4")
    bad_txt = tmp_path / "bad.txt"; bad_txt.write_text("1 2 three\n")
    rc, _, err = run(capsys, ["spectra", "--sample", bad_txt, "--out", out, *ERANGE])
    assert_one_line_error(rc, err, "bad.txt")
    rc, _, err = run(capsys, ["spectra", "--sample", WS2 / "sample_14.txt", "--out", out, *ERANGE[:1], "5", "1"])
    assert_one_line_error(rc, err, "--energy-range", "EMIN")
    rc, _, err = run(capsys, ["spectra", "--sample", WS2 / "sample_14.txt", "--vacuum",
                              data_dir() / "ws2" / "specimen3" / "vacuum_01.txt", "--out", out, *ERANGE])
    assert_one_line_error(rc, err, "vacuum_01.txt", "differs")
    rc, _, err = run(capsys, ["image", WS2 / "sample_14.txt", "--out", out])
    assert_one_line_error(rc, err, "not spectral images")
    assert not out.exists()


def test_plain_text_needs_energy_range(capsys, tmp_path):
    rc, _, err = run(capsys, ["spectra", "--vacuum", WS2 / "vacuum_17.txt", "--sample", WS2 / "sample_14.txt",
                              "--out", tmp_path / "o"])
    assert_one_line_error(rc, err, "sample_14.txt", "--energy-range", "eV")


def test_no_departure_names_the_file_and_where_to_put_dE1(capsys, tmp_path):
    # monochromated WS2 (specimen3): sample_09's ratio to the vacuum reference never rises before the ZLP sinks into
    # the noise. The one-line error names the file, the energy where its ZLP sinks, and the option, before any training.
    S3 = data_dir() / "ws2" / "specimen3"
    out = tmp_path / "o"
    rc, _, err = run(capsys, ["spectra", "--vacuum", *sorted(S3.glob("vacuum_*.txt")), "--sample", *sorted(S3.glob("sample_*.txt")),
                              "--out", out, "--energy-range", "-0.93", "9.07"])
    assert_one_line_error(rc, err, "1 of 10 spectra never depart", "sample_09.txt: 2.", "pass dE1")
    assert "sample_04" not in error_lines(err)[0] and "training" not in err and not out.exists()


def test_existing_out_dir_is_refused(capsys, tmp_path):
    out = tmp_path / "out"; out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["spectra", "--sample", WS2 / "sample_14.txt", *ERANGE, "--out", out]
    rc, _, err = run(capsys, argv)
    assert_one_line_error(rc, err, str(out), "not empty", "--overwrite")
    rc, _, err = run(capsys, argv + ["--overwrite"])   # not an eelsnb result: never replaced
    assert_one_line_error(rc, err, "not eelsnb results")
    f = tmp_path / "file"; f.write_text("x")
    rc, _, err = run(capsys, ["spectra", "--sample", WS2 / "sample_14.txt", *ERANGE, "--out", f])
    assert_one_line_error(rc, err, "not a directory")
    assert (out / "notes.txt").read_text() == "mine" and f.read_text() == "x"


class _Fake:
    "Stand-in results: what the pipelines return, minus the science (for the failure paths)."
    def to_dict(self): return {"samples": [{"file": "s", "band_gap": {"median": 1.0, "low": 0.9, "high": 1.1}}]}
    def figures(self): return {}
    def save(self, d, overwrite=False):
        Path(d).mkdir(exist_ok=True); (Path(d) / "results.json").write_text(json.dumps(self.to_dict())); return [Path(d) / "results.json"]


@pytest.fixture
def earlier_out(tmp_path, monkeypatch):
    "An --out holding earlier results, and an analysis that returns at once (only the writing can fail)."
    fake = types.ModuleType("eelsnb.analysis"); fake.analyse_spectra = lambda *a, **k: _Fake()
    monkeypatch.setitem(sys.modules, "eelsnb.analysis", fake)
    out = tmp_path / "out"; out.mkdir(); (out / "results.json").write_text('{"old": true}')
    return out

def test_failed_run_leaves_out_as_it_was(capsys, tmp_path, monkeypatch, earlier_out):
    out = earlier_out
    def boom(*a, **k): raise RuntimeError("disk on fire")
    monkeypatch.setattr(cli, "write_report", boom)
    argv = ["spectra", "--sample", WS2 / "sample_14.txt", *ERANGE, "--out", out, "--overwrite"]
    rc, _, err = run(capsys, argv)
    assert rc == 1 and "internal error" in err and "--debug" in err and "Traceback" not in err
    assert json.loads((out / "results.json").read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]     # no staging directory left behind
    with pytest.raises(RuntimeError, match="disk on fire"): main([str(a) for a in argv + ["--debug"]])
    assert json.loads((out / "results.json").read_text()) == {"old": True}

def test_full_disk_says_so_and_leaves_out_as_it_was(capsys, tmp_path, monkeypatch, earlier_out):
    out = earlier_out
    def full(path, *a, **k): raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(cli, "write_report", lambda results, path, **k: full(path))
    rc, _, err = run(capsys, ["spectra", "--sample", WS2 / "sample_14.txt", *ERANGE, "--out", out, "--overwrite"])
    assert_one_line_error(rc, err, "No space left on device", "free some space", "left --out as it was")
    assert json.loads((out / "results.json").read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]     # no staging directory left behind
    def other(path, *a, **k): raise OSError(errno.EACCES, "Permission denied", str(path))   # other OS errors: no such hint
    monkeypatch.setattr(cli, "write_report", lambda results, path, **k: other(path))
    rc, _, err = run(capsys, ["spectra", "--sample", WS2 / "sample_14.txt", *ERANGE, "--out", out, "--overwrite"])
    assert_one_line_error(rc, err, "Permission denied")
    assert "free some space" not in err


# ---------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def spectra_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "spectra"
    import io, contextlib
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(["spectra", "--vacuum", str(WS2 / "vacuum_17.txt"), "--sample", str(WS2 / "sample_14.txt"),
                   *ERANGE, *SMALL, "--seed", "1", "--out", str(out)])
    return rc, out, o.getvalue(), e.getvalue()


def test_spectra_run_writes_results(spectra_run, tmp_path):
    rc, out, stdout, stderr = spectra_run
    assert rc == 0, stderr[-3000:]
    d = json.loads((out / "results.json").read_text())
    assert isinstance(d["samples"], list) and len(d["samples"]) == 1
    s = d["samples"][0]
    assert {"file", "band_gap", "exponent", "t_over_lambda", "dE1", "dE2"} <= set(s), sorted(s)
    assert s["file"] == "sample_14.txt"
    for k in ("band_gap", "exponent", "t_over_lambda"): check_summary(s[k], k)
    assert 0.3 < s["band_gap"]["median"] < 4.0 and 0 < s["t_over_lambda"]["median"] < 5
    dE1, dE2 = float(np.ravel(s["dE1"])[0]), float(np.ravel(s["dE2"])[0])
    assert 0 < dE1 < dE2 < 45
    assert d["cli"]["replicas"] == 16 and d["cli"]["command"].startswith("eelsnb spectra")
    assert d["onset_model"]["name"] == "power" and d["cli"]["onset_model"] == "power"   # the default model, said so
    assert "band_gap_power" not in s and "band_gap_power" not in d["pooled"]
    # 'auto' by default: calibrated only at a vacuum ZLP FWHM of 0.1 eV or less; this one is 0.45 eV: the raw spread
    assert d["cli"]["calibrate"] == "auto" and d["fwhm"] > 0.1
    assert d["spread_calibration"] is None and d["settings"]["calibrate"] == {"requested": "auto", "tried": False}
    # the peak searches' default windows: WS2's A and B excitons, the plasmon in 10-40 eV, said in results.json
    assert d["cli"]["exciton_windows"] == [[1.8, 2.2], [2.2, 2.7]] and d["cli"]["plasmon_window"] == [10.0, 40.0]
    assert [x["name"] for x in s["excitons"]] == ["A", "B"] and s["plasmon"] is not None
    assert (out / "model" / "model.json").is_file() and (out / "model" / "weights.safetensors").is_file()
    assert list(out.glob("**/*.hspy")), sorted(p.name for p in out.rglob("*"))
    h = check_report(out / "report.html")
    assert "sample_14.txt" in h and "band gap" in h
    assert "failed fits" in h and "fits kept on an edge or bound" in h and isinstance(s["n_at_edge"], int)
    assert "sample_14.txt: band gap" in stdout
    # every file and directory written has the modes of ordinary ones (0644/0755 with umask 022), none is private
    (tmp_path / "plain.txt").write_text("x"); (tmp_path / "plain").mkdir()
    fmode, dmode = ((tmp_path / n).stat().st_mode & 0o777 for n in ("plain.txt", "plain"))
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    bad = {k: oct(v) for k, v in modes.items() if v != (dmode if (out / k).is_dir() else fmode)}
    assert not bad, bad
    assert "eelsnb [" in stderr and "analysing" in stderr                # progress lines
    # at 0.45 eV the exponent b is not measured: said in results.json, at the top of the report and after the results
    assert len(d["cautions"]) == 1 and d["cautions"][0].startswith("exponent: the exponent b is not measured at a ZLP FWHM of 0.4")
    assert d["settings"]["exponent_caution"] in d["cautions"][0] and h.index("Cautions") < h.index("Results per sample")
    # stdout holds the results only (one line per sample, then the cautions); training progress went to stderr
    assert stdout.strip().splitlines() == [l for l in stdout.strip().splitlines() if l.startswith("sample_14.txt: band gap")] + \
        [f"CAUTION: {c}" for c in d["cautions"]]
    assert "Epoch" in stderr and "Epoch" not in stdout


def test_spectra_run_refuses_then_overwrites(capsys, spectra_run):
    "Also the exciton-aware onset model: --onset-model reaches analyse_spectra and results.json."
    rc, out, _, _ = spectra_run
    before = (out / "results.json").read_text()
    argv = ["spectra", "--vacuum", WS2 / "vacuum_17.txt", "--sample", WS2 / "sample_14.txt", *ERANGE,
            "--replicas", "4", "--epochs", "300", "--out", out, "--quiet", "--onset-model", "excitons"]
    rc, _, err = run(capsys, argv)
    assert_one_line_error(rc, err, "not empty")
    assert (out / "results.json").read_text() == before
    (out / "my_notes.txt").write_text("mine")      # a user's file beside the results: --overwrite refuses, naming it
    rc, _, err = run(capsys, argv + ["--overwrite"])
    assert_one_line_error(rc, err, "(my_notes.txt) that --overwrite would delete")
    assert (out / "results.json").read_text() == before and "analysing" not in err
    (out / "my_notes.txt").unlink()
    rc, stdout, err = run(capsys, argv + ["--overwrite"])
    assert rc == 0, err[-3000:]
    assert stdout == "" and "eelsnb [" not in err                          # --quiet
    d = json.loads((out / "results.json").read_text())
    assert d["cli"]["replicas"] == 4 and d["cli"]["onset_model"] == "excitons"
    assert d["onset_model"]["name"] == "excitons" and d["settings"]["onset_model"] == "excitons"
    s = d["samples"][0]
    for k in ("band_gap", "exponent", "band_gap_power", "exponent_power"):   # the power law is kept beside it
        if s[k]["median"] is not None: check_summary(s[k], k)
    assert {"band_gap_power", "exponent_power"} <= set(d["pooled"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["spectra"]     # no staging directory left behind



def test_spectra_with_a_saved_model(capsys, tmp_path):
    """--model: train once, analyse many. The same sample, seed and model give the training run's results to the bit;
    other samples need no vacuum; options that only shape a training, a missing or damaged model, and spectra off the
    model's axis stop with one line before any work."""
    import shutil
    base = ["spectra", "--vacuum", WS2 / "vacuum_17.txt", "--sample", WS2 / "sample_14.txt", *ERANGE, "--seed", "1"]
    first = tmp_path / "first"
    rc, _, err = run(capsys, base + ["--replicas", "6", "--epochs", "300", "--out", first])
    assert rc == 0, err[-3000:]
    d0 = json.loads((first / "results.json").read_text())
    out = tmp_path / "again"
    rc, stdout, err = run(capsys, base + ["--model", first, "--out", out])
    assert rc == 0, err[-3000:]
    assert "Epoch" not in err and f"model {first / 'model'}: 6 replicas" in err         # nothing trained
    d = json.loads((out / "results.json").read_text())
    for k in ("band_gap", "exponent", "t_over_lambda", "dE1", "dE2"): assert d["samples"][0][k] == d0["samples"][0][k], k
    card = json.loads((first / "model" / "model.json").read_text())
    assert d["cli"]["model"] == str((first / "model").absolute()) and d["cli"]["model_weights_sha256"] == card["weights_sha256"]
    assert (d["cli"]["replicas"], d["cli"]["epochs"]) == (6, 300)                         # the model's, not the defaults
    for fn in ("weights.safetensors", "model.json"):                      # the copy is the model as saved, training date included
        assert (out / "model" / fn).read_bytes() == (first / "model" / fn).read_bytes(), fn
    # other samples of the same session, without vacuum spectra, through the model directory itself
    rc, stdout, err = run(capsys, ["spectra", "--sample", WS2 / "sample_15.txt", WS2 / "sample_16.txt", *ERANGE,
                                   "--model", first / "model", "--out", tmp_path / "more", "--quiet"])
    assert rc == 0, err[-3000:]
    more = json.loads((tmp_path / "more" / "results.json").read_text())
    assert [s["file"] for s in more["samples"]] == ["sample_15.txt", "sample_16.txt"]
    for s in more["samples"]:
        m, lo, hi = check_summary(s["band_gap"], "band_gap")
        assert 0.5 < m < 3.0
    # spectra unlike the training data: 30% more counts lie outside its conditions (a caution, in results.json and on
    # stdout); 3x more give a ZLP core far off the measured one, which stops the run
    c14 = np.loadtxt(WS2 / "sample_14.txt")
    for k in (1.3, 3.0): np.savetxt(tmp_path / f"s14x{k}.txt", k * c14)
    rc, stdout, err = run(capsys, ["spectra", "--sample", tmp_path / "s14x1.3.txt", *ERANGE, "--model", first, "--out", tmp_path / "x13"])
    assert rc == 0, err[-3000:]
    c = json.loads((tmp_path / "x13" / "results.json").read_text())["cautions"]
    assert c[0].startswith("model: 1 of 1 spectra lie outside the conditions the model was trained on") and "log_total" in c[0], c
    assert f"CAUTION: {c[0]}" in stdout.splitlines()
    assert not any(l.startswith("model:") for l in d["cautions"])        # the training data themselves: no such caution
    rc, _, err = run(capsys, ["spectra", "--sample", tmp_path / "s14x3.0.txt", *ERANGE, "--model", first, "--out", tmp_path / "x3"])
    assert_one_line_error(rc, err, "ZLP core is")
    # refused before any work: nothing written
    x = tmp_path / "x"
    for extra, words in ((["--replicas", "8"], ["--replicas", "already trained"]),
                         (["--epochs", "5", "--replicas", "8"], ["--replicas and --epochs"]),
                         (["--calibrate"], ["--calibrate", "spread calibration are the model's"]),
                         (["--vacuum-dE1", "3"], ["--vacuum-dE1"]),
                         (["--replicas", "8", "--calibrate", "--vacuum-dE1", "3"], ["--replicas, --calibrate and --vacuum-dE1"])):
        rc, _, err = run(capsys, base + ["--model", first, "--out", x] + extra)
        assert_one_line_error(rc, err, *words)
    # --out must neither be the model's run directory (its training record would be replaced) nor lie in the model
    for o, word in ((first, "holds the --model directory"), (first / "model" / "out", "lies in the --model directory")):
        rc, _, err = run(capsys, base + ["--model", first, "--out", o, "--overwrite"])
        assert_one_line_error(rc, err, word)
    assert json.loads((first / "results.json").read_text()) == d0 and not (first / "model" / "out").exists()
    rc, _, err = run(capsys, base + ["--model", tmp_path / "nowhere", "--out", x])
    assert_one_line_error(rc, err, "--model", "no such directory")
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, base + ["--model", tmp_path / "empty", "--out", x])
    assert_one_line_error(rc, err, "--model", "holds no eelsnb model")
    bad = tmp_path / "bad"; shutil.copytree(first / "model", bad)
    w = (bad / "weights.safetensors").read_bytes(); (bad / "weights.safetensors").write_bytes(w[:len(w) // 2])
    rc, _, err = run(capsys, base + ["--model", bad, "--out", x])
    assert_one_line_error(rc, err, "--model", "sha256 does not match")
    S3 = data_dir() / "ws2" / "specimen3"          # monochromated, 5 meV channels up to 9.07 eV: not the model's axis
    rc, _, err = run(capsys, ["spectra", "--sample", S3 / "sample_04.txt", "--energy-range", "-0.93", "9.07",
                              "--model", first, "--out", x])
    assert_one_line_error(rc, err, "training axis")
    assert not x.exists()


def test_model_with_a_spread_calibration(capsys, tmp_path):
    """A model trained with --calibrate keeps its calibration when reused; --no-calibrate drops it (the raw spread),
    and results.json says so."""
    base = ["spectra", "--vacuum", WS2 / "vacuum_17.txt", WS2 / "vacuum_22.txt", "--sample", WS2 / "sample_14.txt", *ERANGE]
    rc, _, err = run(capsys, base + ["--replicas", "6", "--epochs", "200", "--calibrate", "--vacuum-dE1", "1.5",
                                     "--out", tmp_path / "cal", "--quiet"])
    assert rc == 0, err[-3000:]
    scale = json.loads((tmp_path / "cal" / "results.json").read_text())["spread_calibration"]["scale"]
    assert scale != 1.0
    rc, _, err = run(capsys, base + ["--model", tmp_path / "cal", "--out", tmp_path / "kept", "--quiet"])
    assert rc == 0, err[-3000:]
    kept = json.loads((tmp_path / "kept" / "results.json").read_text())
    assert kept["spread_calibration"]["scale"] == scale
    rc, _, err = run(capsys, base + ["--model", tmp_path / "cal", "--no-calibrate", "--out", tmp_path / "raw", "--quiet"])
    assert rc == 0, err[-3000:]
    raw = json.loads((tmp_path / "raw" / "results.json").read_text())
    assert raw["spread_calibration"] is None and raw["settings"]["calibrate"]["dropped"].startswith("the given ensemble's spread calibration")
    w = lambda d: d["samples"][0]["t_over_lambda"]["high"] - d["samples"][0]["t_over_lambda"]["low"]
    assert w(raw) != w(kept) and (w(kept) < w(raw)) == (scale < 1)          # the calibration narrows (or widens) the raw spread

def test_dE1_one_value_or_one_per_sample(capsys, tmp_path):
    "--dE1/--dE2 take one value for every sample or one per sample (as the no-departure message suggests)."
    two = ["--sample", WS2 / "sample_14.txt", WS2 / "sample_15.txt", "--vacuum", WS2 / "vacuum_17.txt", *ERANGE]
    rc, _, err = run(capsys, ["spectra", *two, "--dE1", "1.4", "1.5", "1.6", "--out", tmp_path / "bad"])
    assert_one_line_error(rc, err, "--dE1", "one per sample (2), got 3")
    rc, _, err = run(capsys, ["spectra", *two, "--dE1", "1.4", "8", "--dE2", "7", "--out", tmp_path / "bad"])
    assert_one_line_error(rc, err, "must be below --dE2", "sample by sample")
    assert "analysing" not in err and not (tmp_path / "bad").exists()
    out = tmp_path / "o"
    rc, _, err = run(capsys, ["spectra", *two, "--dE1", "1.4", "1.5", "--replicas", "4", "--epochs", "200", "--quiet",
                              "--no-plasmon", "--out", out])
    assert rc == 0, err[-3000:]
    d = json.loads((out / "results.json").read_text())
    assert [s["dE1"] for s in d["samples"]] == [1.4, 1.5] and d["cli"]["dE1"] == [1.4, 1.5]


def test_monochromated_ws2_with_dE1_per_sample_finds_the_excitons(capsys, tmp_path):
    """Real monochromated WS2 (specimen 3, 0.08 eV): the reference rule stops on sample_09 (see above); each spectrum's
    own power-law tail gives dE1, passed one per sample. No band gap is claimed from these thin, noisy spectra (the WS2
    tutorial says why), but the A and B excitons of WS2 are found in them (A at 1.89-1.97 eV in all ten, B at 2.24-2.36 eV in
    eight, with 8 replicas x 300 epochs)."""
    from eelsnb.io import load_ws2
    from eelsnb.preprocess import align_zlp, find_dE1_dE2
    d = load_ws2(3)
    e = d.sample.axes_manager[-1].axis
    S, _ = align_zlp(d.sample.data.astype(float), e)
    d1 = np.atleast_1d(find_dE1_dE2(S, e).dE1)                 # no reference: each spectrum's own ZLP tail
    S3 = data_dir() / "ws2" / "specimen3"
    out = tmp_path / "s3"
    rc, _, err = run(capsys, ["spectra", "--vacuum", *sorted(S3.glob("vacuum_*.txt")), "--sample", *sorted(S3.glob("sample_*.txt")),
                              "--energy-range", "-0.93", "9.07", "--dE1", *[f"{v:.3f}" for v in d1], "--replicas", "8",
                              "--epochs", "300", "--no-plasmon", "--quiet", "--out", out])
    assert rc == 0, err[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert [s["dE1"] for s in r["samples"]] == [round(float(v), 3) for v in d1]
    pos = {x["name"]: [s_["excitons"][i]["position"]["median"] for s_ in r["samples"]] for i, x in enumerate(r["samples"][0]["excitons"])}
    assert all(p is not None and 1.85 < p < 2.05 for p in pos["A"]), pos["A"]
    assert sum(p is not None and 2.2 < p < 2.5 for p in pos["B"]) >= 8, pos["B"]
    # the axis ends at 9.07 eV, far below WS2's plasmon: t/lambda (0.01-0.04 here) is a lower bound, and cautioned
    assert any(c.startswith("t_over_lambda: t/lambda is the log-ratio over the energy axis, which ends at 9.1 eV") for c in r["cautions"]), r["cautions"]


def test_cli_peak_defaults_are_the_analyses_defaults():
    "The parser keeps its own copy of the default windows (so that --help does not import the analysis modules)."
    import inspect
    from eelsnb.physics import WS2_EXCITON_WINDOWS
    from eelsnb.analysis import analyse_spectra
    from eelsnb.image import analyse_image
    from eelsnb.large import analyse_large
    assert tuple(map(tuple, cli.WS2_EXCITONS)) == tuple(map(tuple, WS2_EXCITON_WINDOWS))
    for f in (analyse_spectra, analyse_image, analyse_large):
        ps = inspect.signature(f).parameters
        assert tuple(ps["plasmon_window"].default) == cli.PLASMON_WINDOW, f.__name__
        assert tuple(map(tuple, ps["exciton_windows"].default)) == cli.WS2_EXCITONS, f.__name__


def test_peak_windows_from_the_options(capsys, tmp_path):
    "--exciton (repeated), --no-plasmon reach analyse_spectra and results.json; bad windows stop before any training."
    base = ["spectra", "--vacuum", WS2 / "vacuum_17.txt", "--sample", WS2 / "sample_14.txt", *ERANGE, "--out", tmp_path / "bad"]
    for extra, words in ((["--exciton", "2.2", "1.8"], ("--exciton 2.2 1.8", "below the high edge")),
                         (["--plasmon-window", "30", "60"], ("--plasmon-window 30 60", "outside the energy axis")),
                         (["--exciton", "1.8", "2.2", "--no-excitons"], ("--exciton and --no-excitons",)),
                         (["--plasmon-window", "10", "30", "--no-plasmon"], ("--plasmon-window and --no-plasmon",))):
        rc, _, err = run(capsys, base + extra)
        assert_one_line_error(rc, err, *words)
        assert "analysing" not in err and not (tmp_path / "bad").exists()
    out = tmp_path / "o"
    rc, _, err = run(capsys, ["spectra", "--vacuum", WS2 / "vacuum_17.txt", "--sample", WS2 / "sample_14.txt", *ERANGE,
                              "--replicas", "4", "--epochs", "200", "--quiet", "--out", out,
                              "--exciton", "1.9", "2.1", "--exciton", "2.9", "3.4", "--no-plasmon"])
    assert rc == 0, err[-3000:]
    d = json.loads((out / "results.json").read_text())
    assert d["cli"]["exciton_windows"] == [[1.9, 2.1], [2.9, 3.4]] and d["cli"]["plasmon_window"] is None
    s = d["samples"][0]
    assert [(x["name"], x["window"]) for x in s["excitons"]] == [("A", [1.9, 2.1]), ("B", [2.9, 3.4])]
    assert s["plasmon"] is None


def test_calibrate_scales_the_spread_on_held_out_vacuum(capsys, tmp_path):
    """--calibrate: the default training, the spread measured on the vacuum held out beyond --vacuum-dE1 (by default where
    it sinks to 10x its noise). The bundled WS2 vacuum spectra differ by ~30% beyond 5 eV: there the held-out counts carry
    too little signal, and the run says so and keeps the raw spread; held out from 2.5 eV they calibrate, and the factor
    is in results.json and the model card. No caution on thin samples (09, 'Calibrated intervals')."""
    import warnings
    args = ["spectra", "--vacuum", WS2 / "vacuum_17.txt", WS2 / "vacuum_22.txt", "--sample", WS2 / "sample_14.txt", *ERANGE,
            "--replicas", "8", "--epochs", "300", "--calibrate"]
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rc, _, err = run(capsys, [*args, "--out", tmp_path / "o"])
    assert rc == 0, err[-3000:]
    d = json.loads((tmp_path / "o" / "results.json").read_text())
    msg = [str(w.message) for w in ws if "spread calibration skipped" in str(w.message)]
    assert len(msg) == 1 and f"held out beyond {d['settings']['vacuum_dE1']:.2f} eV" in msg[0] and "--vacuum-dE1" in msg[0], msg
    assert d["spread_calibration"] is None and d["settings"]["vacuum_dE1"] > 5 and "calibration_thin_samples" not in d
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rc, _, err = run(capsys, [*args, "--vacuum-dE1", "2.5", "--out", tmp_path / "o2"])
    assert rc == 0, err[-3000:]
    assert not any("spread calibration skipped" in str(w.message) for w in ws), [str(w.message) for w in ws]
    d = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert d["samples"][0]["t_over_lambda"]["median"] < 0.3 and "calibration_thin_samples" not in d   # thin, no caution
    c = d["spread_calibration"]
    assert c is not None and c["scale"] > 0 and c["n_points"] >= 20 and abs(c["coverage_after"] - 0.68) < 0.05, c
    assert d["cli"]["calibrate"] is True and d["cli"]["vacuum_dE1"] == 2.5
    assert c["window"][0] == d["settings"]["vacuum_dE1"] == 2.5 > d["samples"][0]["dE1"]   # held out beyond --vacuum-dE1
    card = json.loads((tmp_path / "o2" / "model" / "model.json").read_text())
    assert card["spread_calibration"]["scale"] == c["scale"]
    rc, _, err = run(capsys, ["spectra", "--sample", WS2 / "sample_14.txt", *ERANGE, "--calibrate", "--out", tmp_path / "p"])
    assert_one_line_error(rc, err, "--calibrate", "--vacuum")
    rc, _, err = run(capsys, ["spectra", "--sample", WS2 / "sample_14.txt", *ERANGE, "--vacuum-dE1", "3", "--out", tmp_path / "p"])
    assert_one_line_error(rc, err, "--vacuum-dE1", "--vacuum")
    rc, _, err = run(capsys, [*args, "--vacuum-dE1", "60", "--out", tmp_path / "p"])
    assert_one_line_error(rc, err, "vacuum_dE1", "between 0 and")
    assert not (tmp_path / "p").exists()


def test_hspy_input_ignores_energy_range(capsys, tmp_path):
    "Self-describing files: --energy-range is ignored with a note; a stack gives one result per spectrum."
    from eelsnb.io import load_ws2
    w = load_ws2(4)
    save(to_signal(w.sample_counts[:2], w.energy), tmp_path / "stack.hspy")
    save(to_signal(w.vacuum_counts[0], w.energy), tmp_path / "vac.hspy")
    rc, _, err = run(capsys, ["spectra", "--vacuum", tmp_path / "vac.hspy", "--sample", tmp_path / "stack.hspy",
                              *ERANGE, "--replicas", "4", "--epochs", "300", "--out", tmp_path / "o"])
    assert rc == 0, err[-3000:]
    assert "note: --energy-range ignored for stack.hspy" in err
    d = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [s["file"] for s in d["samples"]] == ["stack.hspy[0]", "stack.hspy[1]"]


def test_image_run_on_synthetic_si(capsys, tmp_path):
    from eelsnb.synthetic import synthetic_si
    si = synthetic_si(shape=(8, 10), n_terraces=2, band_gaps=(1.5,), seed=3)
    f = save(to_signal(si.counts, si.energy), tmp_path / "si.hspy")
    out = tmp_path / "img"
    rc, stdout, err = run(capsys, ["image", f, "--clusters", "3", "--replicas", "4", "--epochs", "300",
                                   "--out", out, "--exciton", "1.9", "2.2", "--no-plasmon"])
    assert rc == 0, err[-3000:]
    d = json.loads((out / "results.json").read_text())
    flat = dict(cli._summaries(d))
    for k in ("band_gap", "exponent", "t_over_lambda"):
        hits = [n for n in flat if n.split(".")[-1] == k or n.split(".")[0] == k]
        assert hits, (k, sorted(flat))
    written = {p.name for p in out.rglob("*.hspy")}
    assert written, sorted(p.name for p in out.rglob("*"))
    named = {Path(v).name for v in _strings(d) if str(v).endswith(".hspy") and Path(v).name != "si.hspy"}  # not the input
    assert named and named <= written, (named, written)     # the map files results.json names exist
    check_report(out / "report.html")
    assert d["cli"]["clusters"] == 3
    # one exciton window and no plasmon search: exactly those maps
    assert d["cli"]["exciton_windows"] == [[1.9, 2.2]] and d["cli"]["plasmon_window"] is None
    maps = {k.split(".")[-1] for k in flat}
    assert "exciton_position" in maps and not {m for m in maps if m.startswith(("exciton2", "plasmon"))}, sorted(maps)
    # the synthetic SI's ZLP is 0.45 eV wide: the exponent map is not a measurement, said in results.json, report, stdout
    assert d["settings"]["zlp_fwhm"] > 0.4 and d["cautions"][0] == "exponent: " + d["settings"]["exponent_caution"]
    report = (out / "report.html").read_text()
    assert "Cautions" in report and stdout.strip().splitlines()[-len(d["cautions"]):] == [f"CAUTION: {c}" for c in d["cautions"]]
    # per thickness cluster: the map summaries over its pixels in results.json, a line each on stdout, a table in the report
    rows = d["clusters"]["summaries"]
    assert [r["cluster"] for r in rows] == [0, 1, 2] and sum(r["pixels"] for r in rows) == 80, rows
    for r in rows: assert f"cluster {r['cluster']} ({r['pixels']} pixels): t_over_lambda " in stdout, stdout
    assert "Per thickness cluster" in report
    # cluster 0 is the vacuum around the flake (t/lambda ~ 0); its pixels carry band gaps, so the cautions name it
    assert abs(rows[0]["t_over_lambda"]["median"]) < 0.02 and rows[0]["band_gap"]["n_pixels"] > 0, rows[0]
    # and every SI band-gap map says how far its intervals held on synthetic truth (`eelsnb.image.band_gap_map_caution`)
    assert [c.split(":")[0] for c in d["cautions"]] == ["exponent", "band_gap", "vacuum"], d["cautions"]
    assert d["cautions"][1] == "band_gap: " + d["settings"]["band_gap_caution"] and d["cautions"][2].startswith("vacuum: cluster 0 (")
    # --model: the same SI, seed and clusters with the saved model give the same maps, without training
    out2 = tmp_path / "img2"
    rc, _, err = run(capsys, ["image", f, "--clusters", "3", "--model", out, "--out", out2, "--exciton", "1.9", "2.2", "--no-plasmon"])
    assert rc == 0, err[-3000:]
    assert "Epoch" not in err and "4 replicas" in err
    d2 = json.loads((out2 / "results.json").read_text())
    assert dict(cli._summaries(d2)) == flat and d2["cli"]["model"] == str((out / "model").absolute())
    from eelsnb.image import ImageResults
    a, b = ImageResults.load(out), ImageResults.load(out2)
    for n in a.maps:
        for w in range(4): np.testing.assert_array_equal(np.asarray(b.maps[n][w]), np.asarray(a.maps[n][w]), err_msg=n)
    assert not any(c.startswith("model:") for c in d2["cautions"])           # its own SI: inside its training conditions
    rc, _, err = run(capsys, ["image", f, "--model", out, "--replicas", "8", "--out", tmp_path / "img3"])
    assert_one_line_error(rc, err, "--replicas", "already trained")
    # a scan with 1.5x the counts: most pixels lie outside the model's training conditions, and the run says so
    g = save(to_signal(1.5 * si.counts, si.energy), tmp_path / "si15.hspy")
    rc, stdout, err = run(capsys, ["image", g, "--clusters", "3", "--model", out, "--out", tmp_path / "img15", "--no-plasmon"])
    assert rc == 0, err[-3000:]
    c = [c for c in json.loads((tmp_path / "img15" / "results.json").read_text())["cautions"] if c.startswith("model:")]
    assert len(c) == 1 and " of 80 pixels lie outside the conditions the model was trained on" in c[0], c
    assert int(c[0].split()[1]) >= 40 and f"CAUTION: {c[0]}" in stdout.splitlines()


def _strings(d):
    if isinstance(d, dict):
        for v in d.values(): yield from _strings(v)
    elif isinstance(d, (list, tuple)):
        for v in d: yield from _strings(v)
    elif isinstance(d, str): yield d


def test_demo_runs_spectra_on_the_bundled_data(capsys, tmp_path):
    rc, stdout, err = run(capsys, ["demo", "--replicas", "4", "--epochs", "300", "--out", tmp_path / "demo"])
    assert rc == 0, err[-3000:]
    d = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [s["file"] for s in d["samples"]] == [f"sample_{i}.txt" for i in (14, 15, 16, 19, 20, 21)]
    assert len(d["cli"]["vacuum"]) == 3
    assert d["onset_model"]["name"] == "excitons" and "band_gap_power" in d["samples"][0]   # the demo's default model
    assert "report.html" in err


def test_dm3_dm4_msa_in_one_run(capsys, tmp_path):
    "Gatan DM3/DM4 (written by the clean-room fixture writer) and EMSA/MSA files need no --energy-range."
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dmfile import write_dm
    from eelsnb.io import load_ws2
    w = load_ws2(4)
    step = float(w.energy[1] - w.energy[0])
    write_dm(tmp_path / "vac.dm3", w.vacuum_counts[0].astype(np.float32), float(w.energy[0]), step, version=3)
    write_dm(tmp_path / "s14.dm4", w.sample_counts[0].astype(np.float32), float(w.energy[0]), step, version=4)
    to_signal(w.sample_counts[1], w.energy).save(str(tmp_path / "s15.msa"))
    rc, stdout, err = run(capsys, ["spectra", "--vacuum", tmp_path / "vac.dm3", "--sample", tmp_path / "s14.dm4",
                                   tmp_path / "s15.msa", "--replicas", "4", "--epochs", "300", "--out", tmp_path / "o"])
    assert rc == 0, err[-3000:]
    d = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [s["file"] for s in d["samples"]] == ["s14.dm4", "s15.msa"]
    for s in d["samples"]: check_summary(s["t_over_lambda"], "t_over_lambda")
    assert "s14.dm4: band gap" in stdout and "s15.msa: band gap" in stdout


def test_image_zspy_goes_through_the_large_pipeline_and_resumes(capsys, tmp_path):
    "A .zspy SI runs through eelsnb.large (lazy, resumable): maps and results written; the same command again resumes."
    from eelsnb.synthetic import synthetic_si
    si = synthetic_si(shape=(12, 16), n_terraces=2, band_gaps=(1.5,), seed=4)
    f = save(to_signal(si.counts.astype(np.float32), si.energy), tmp_path / "si.zspy")
    out = tmp_path / "big"
    # a peak window off the SI's axis (-3..48 eV) stops with one line before any work, nothing written
    rc, _, err = run(capsys, ["image", f, "--out", out, "--exciton", "45", "55"])
    assert_one_line_error(rc, err, "--exciton 45 55", "outside the energy axis")
    assert not out.exists()
    argv = ["image", f, "--clusters", "2", "--replicas", "4", "--epochs", "300", "--out", out]
    rc, stdout, err = run(capsys, argv)
    assert rc == 0, err[-3000:]
    assert "large-SI pipeline" in err
    d = json.loads((out / "results.json").read_text())
    flat = dict(cli._summaries(d))
    assert any(n.split(".")[0] == "t_over_lambda" or n.endswith("t_over_lambda") for n in flat), sorted(flat)
    maps = {p.name for p in (out / "maps").iterdir()}
    assert "quality.zspy" in maps and "t_over_lambda.zspy" in maps, sorted(maps)
    # the large pipeline says the same of its exponent map (the ZLP of the kernels its band-gap fits used)
    assert d["settings"]["zlp_fwhm"] > 0.4 and d["cautions"][0] == "exponent: " + d["settings"]["exponent_caution"]
    assert "band_gap: " + d["settings"]["band_gap_caution"] in d["cautions"]
    assert stdout.strip().splitlines()[-len(d["cautions"]):] == [f"CAUTION: {c}" for c in d["cautions"]]
    rows = d["clusters"]["summaries"]    # per thickness cluster, as from the in-memory pipeline
    assert [r["cluster"] for r in rows] == [0, 1] and sum(r["pixels"] for r in rows) == 12 * 16 - d["quality"]["masked"], rows
    check_report(out / "report.html")
    assert oct((out / "results.json").stat().st_mode & 0o777) != oct(0o600)
    before = (out / "results.json").read_text()
    rc, _, err = run(capsys, argv)                           # the same command: the finished run is resumed, not redone
    assert rc == 0, err[-3000:]
    assert json.loads((out / "results.json").read_text())["maps"] == json.loads(before)["maps"]
    # --model with the large pipeline: the trained run's model, copied into the new run, gives the same maps
    out3 = tmp_path / "big_model"
    rc, _, err = run(capsys, ["image", f, "--clusters", "2", "--model", out, "--out", out3])
    assert rc == 0, err[-3000:]
    d3 = json.loads((out3 / "results.json").read_text())
    assert d3["cli"]["model_weights_sha256"] == json.loads((out / "model" / "model.json").read_text())["weights_sha256"]
    assert (out3 / "model" / "weights.safetensors").read_bytes() == (out / "model" / "weights.safetensors").read_bytes()
    assert dict(cli._summaries(d3)) == dict(cli._summaries(d))
    before = (out3 / "results.json").read_text()                           # a model inside --out: refused, nothing touched
    rc, _, err = run(capsys, ["image", f, "--model", out3, "--out", out3, "--overwrite"])
    assert_one_line_error(rc, err, "holds the --model directory")
    assert (out3 / "results.json").read_text() == before
    # --overwrite with other settings: the new run works in a hidden sibling, says where and how to drop it, then replaces
    rc, _, err = run(capsys, argv + ["--seed", "1", "--overwrite"])
    assert rc == 0, err[-3000:]
    assert f"the new run works in {tmp_path / '.big.replacing'}" in err and "delete .big.replacing to abandon the replacement" in err
    assert json.loads((out / "results.json").read_text())["cli"]["seed"] == 1 and not (tmp_path / ".big.replacing").exists()
    rc, _, err = run(capsys, ["image", tmp_path / "nope.zspy", "--scheduler", "local", "--out", tmp_path / "x"])
    assert_one_line_error(rc, err, "nope.zspy", "no such file")


def test_saturated_zlp_is_refused(capsys, tmp_path):
    "A sample whose ZLP is clipped flat (detector saturation) is named before any training; nothing is written."
    x = np.loadtxt(WS2 / "sample_14.txt")
    f = tmp_path / "clipped.txt"
    np.savetxt(f, np.minimum(x, 0.3 * x.max())[None])
    out = tmp_path / "o"
    rc, _, err = run(capsys, ["spectra", "--vacuum", WS2 / "vacuum_17.txt", "--sample", WS2 / "sample_14.txt", f, *ERANGE,
                              "--replicas", "4", "--epochs", "50", "--out", out])
    assert_one_line_error(rc, err, "samples: 1 spectrum has a ZLP clipped flat at its maximum (clipped.txt)", "shorter exposure")
    assert "Epoch" not in err and not out.exists()


def test_ctrl_c_during_training_exits_130(tmp_path):
    """Ctrl-C while the ensemble trains: Lightning answers it with sys.exit(1) (and ignores SIGINT from then on); eelsnb
    turns that back into an interruption: exit 130, one line saying so, --out not written."""
    import signal, time
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "eelsnb.cli", "spectra", "--sample", str(WS2 / "sample_14.txt"), *ERANGE,
           "--replicas", "4", "--epochs", "200000", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_end, seen = time.time() + 120, ""
    while time.time() < t_end and "analysing" not in seen:   # progress lines come before the training starts
        line = proc.stderr.readline()
        if not line: break
        seen += line
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, (seen + err)[-2000:])
    assert "eelsnb: interrupted; --out was left as it was." in err and not out.exists()


def test_a_file_given_twice_is_refused(capsys, tmp_path):
    "The same vacuum file twice (or a sample also given as vacuum) would count one measurement as two: refused before training."
    out = tmp_path / "o"
    rc, _, err = run(capsys, ["spectra", "--vacuum", WS2 / "vacuum_17.txt", WS2 / "sample_14.txt", "--sample", WS2 / "sample_14.txt",
                              *ERANGE, "--replicas", "4", "--epochs", "50", "--out", out])
    assert_one_line_error(rc, err, "equal in every channel to another (sample_14.txt = sample_14.txt)", "give each spectrum once")
    assert "Epoch" not in err and not out.exists()
