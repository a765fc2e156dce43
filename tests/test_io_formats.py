"""eelsnb.io.load on Gatan DM3/DM4 files (written by our own clean-room writer, tests/dmfile.py), msa and hspy."""
from pathlib import Path
import sys

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dmfile import write_dm  # noqa: E402
from eelsnb.io import as_arrays, energy_axis, load, load_ws2, save, to_signal  # noqa: E402


@pytest.mark.parametrize('version', [3, 4])
def test_dm_spectrum_and_si(tmp_path, version):
    ws2 = load_ws2(4)
    e = ws2.energy
    spec = ws2.sample_counts[0].astype(np.float32)
    p = tmp_path / f'spec.dm{version}'
    write_dm(p, spec, float(e[0]), float(e[1] - e[0]), version=version, beam_energy_kev=60, exposure_s=0.01)
    s = load(p)
    assert type(s).__name__ == 'EELSSpectrum'
    counts, energy = as_arrays(s)
    np.testing.assert_array_equal(counts, spec)
    np.testing.assert_allclose(energy, e, atol=1e-9)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == pytest.approx(60)
    assert s.metadata.Acquisition_instrument.TEM.Detector.EELS.exposure == pytest.approx(0.01)

    si = np.random.default_rng(0).poisson(200, (3, 5, 300)).astype(np.float32) + 1
    p = tmp_path / f'si.dm{version}'
    write_dm(p, si, -2.0, 0.05, version=version)
    s = load(p)
    counts, energy = as_arrays(s, ndim=3)
    np.testing.assert_array_equal(counts, si)
    np.testing.assert_allclose(energy, -2.0 + 0.05 * np.arange(300), atol=1e-9)
    lazy = load(p, lazy=True)
    assert lazy._lazy
    np.testing.assert_array_equal(as_arrays(lazy)[0], si)


@pytest.mark.parametrize('version', [3, 4])
def test_truncated_dm_is_a_clear_error(tmp_path, version):
    p = tmp_path / f'spec.dm{version}'
    write_dm(p, np.ones(500, np.float32), -1.0, 0.01, version=version)
    cut = tmp_path / f'cut.dm{version}'
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match='could not be read'):
        load(cut)


def test_dm_with_nan_counts_is_refused(tmp_path):
    data = np.ones(100, np.float32); data[10] = np.nan
    p = tmp_path / 'nan.dm3'
    write_dm(p, data, -1.0, 0.02, version=3)
    with pytest.raises(ValueError, match='NaN/inf'):
        load(p)


def test_msa_hspy_zspy_round_trip(tmp_path):
    e = energy_axis(-4.054, 45.471, 1981)
    spec = np.random.default_rng(3).poisson(800, 1981).astype(float)
    r = load(save(to_signal(spec, e), tmp_path / 'a.msa'))
    np.testing.assert_allclose(as_arrays(r)[0], spec, rtol=1e-6)
    np.testing.assert_allclose(as_arrays(r)[1], e, atol=1e-4)
    si = np.random.default_rng(4).poisson(50, (4, 6, 1981)).astype(np.float32)
    for suffix in ('hspy', 'zspy'):
        r = load(save(to_signal(si, e), tmp_path / f'si.{suffix}'))
        np.testing.assert_array_equal(as_arrays(r)[0], si)
        np.testing.assert_allclose(as_arrays(r)[1], e, atol=1e-9)


def test_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    "A write that fails midway keeps the user's earlier file intact and leaves no temporary behind."
    e = energy_axis(0, 10, 100)
    target = save(to_signal(np.full(100, 5.0), e), tmp_path / 'keep.hspy')
    before = target.read_bytes()
    s = to_signal(np.full(100, 7.0), e)
    def boom(self, filename, *a, **k):
        Path(filename).write_bytes(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(type(s), 'save', boom)
    with pytest.raises(OSError, match='disk full'):
        save(s, target, overwrite=True)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.hspy']
