"""Packaging checks: what a user gets from `pip install` (data, version, no unsafe serialisation)."""
import configparser, re, subprocess, sys, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_settings():
    import eelsnb
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    assert eelsnb.__version__ == cfg['DEFAULT']['version']


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheel')
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                        '-w', str(out), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob('eelsnb-*.whl')
    return whl


def test_wheel_ships_the_ws2_data(wheel):
    "The demo, tutorials and Binder load the WS2 spectra from the installed package, not from ../shared."
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = [l.split(',')[0] for l in (ROOT / 'eelsnb/data/manifest.csv').read_text().splitlines()[1:] if l]
    assert len(manifest) == 22
    missing = [f for f in manifest if f'eelsnb/data/{f}' not in names]
    assert not missing, missing
    assert 'eelsnb/data/manifest.csv' in names and 'eelsnb/io.py' in names


def test_bundled_data_match_manifest():
    from eelsnb.io import manifest, data_dir
    for row in manifest():
        counts = (data_dir() / row['file']).read_text().split()
        assert len(counts) == int(row['n_channels']), row['file']


def test_library_never_pickles_or_evals():
    "Models are safetensors + JSON; nothing in the library may unpickle or eval."
    bad = re.compile(r'\bimport pickle\b|\bpickle\.load|\btorch\.load\(|(?<![\w.])eval\(|\bexec\(')
    hits = [f'{p.name}:{i}' for p in (ROOT / 'eelsnb').glob('*.py')
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, hits
