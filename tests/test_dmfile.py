"""Round trips through our clean-room DM3/DM4 fixture writer (tests/dmfile.py) and hyperspy/rosettasciio.

If these pass, DM fixtures written by ``write_dm`` load in ``hyperspy.api.load`` exactly as the
package's DM loading path will see them: EELS Signal1D, energy axis in eV, (ny, nx) navigation.
"""
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dmfile import write_dm  # noqa: E402

hs = pytest.importorskip('hyperspy.api')

VERSIONS = pytest.mark.parametrize('version', [3, 4])


def _counts(shape, seed=0):
    "Distinct float32 'counts' (no two equal), so any transposition or offset shows."
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))) + rng.random(int(np.prod(shape)))).astype(np.float32).reshape(shape)


@VERSIONS
def test_spectrum_round_trip(tmp_path, version):
    sp = _counts(50)
    path = tmp_path / f'sp.dm{version}'
    write_dm(path, sp, -20.3, 0.1, version=version, title='ZLP')
    s = hs.load(path)
    assert isinstance(s, hs.signals.Signal1D)
    assert s.data.dtype == np.float32 and s.data.shape == (50,)
    np.testing.assert_array_equal(s.data, sp)
    assert s.axes_manager.navigation_dimension == 0
    ax = s.axes_manager.signal_axes[0]
    assert (ax.size, ax.units, ax.scale) == (50, 'eV', 0.1)
    assert ax.offset == pytest.approx(-20.3, rel=1e-14)   # -(-offset/scale)*scale: a few ulp at most
    np.testing.assert_allclose(ax.axis, -20.3 + 0.1 * np.arange(50), rtol=0, atol=1e-12)
    assert s.metadata.Signal.signal_type == 'EELS'
    assert s.metadata.General.title == 'ZLP'


@VERSIONS
def test_spectrum_image_round_trip(tmp_path, version):
    si = _counts((3, 4, 50), seed=1)                      # (ny, nx, n_E)
    path = tmp_path / f'si.dm{version}'
    write_dm(path, si, 100.0, 0.25, version=version, nav_scale_nm=2.0)
    s = hs.load(path)
    assert isinstance(s, hs.signals.Signal1D)
    assert s.data.shape == (3, 4, 50) and s.data.dtype == np.float32
    np.testing.assert_array_equal(s.data, si)
    assert s.axes_manager.navigation_shape == (4, 3)      # hyperspy lists (nx, ny)
    np.testing.assert_array_equal(s.inav[1, 2].data, si[2, 1])   # pixel x=1, y=2
    ax = s.axes_manager.signal_axes[0]
    assert (ax.size, ax.units, ax.name) == (50, 'eV', 'Energy loss')
    np.testing.assert_array_equal(ax.axis, 100.0 + 0.25 * np.arange(50))   # dyadic values: exact
    for nav, name in zip(s.axes_manager.navigation_axes, ('x', 'y')):
        assert (nav.name, nav.units, nav.scale, nav.offset) == (name, 'nm', 2.0, 0.0)
        assert not np.signbit(nav.offset)                 # no '-0' in the axes table
    assert s.metadata.Signal.signal_type == 'EELS'


@VERSIONS
def test_spectrum_image_lazy(tmp_path, version):
    "rosettasciio memory-maps the data block for lazy loading: its offset must be right too."
    si = _counts((2, 5, 30), seed=2)
    path = tmp_path / f'si.dm{version}'
    write_dm(path, si, 0.0, 1.0, version=version)
    s = hs.load(path, lazy=True)
    np.testing.assert_array_equal(np.asarray(s.data.compute()), si)


@VERSIONS
@pytest.mark.parametrize('shape', [(40,), (2, 3, 40)])
def test_beam_energy_and_exposure_are_mapped(tmp_path, version, shape):
    path = tmp_path / f'x.dm{version}'
    write_dm(path, _counts(shape), 5.0, 0.5, version=version, beam_energy_kev=200, exposure_s=0.25,
             image_tags={'EELS': {'Experimental Conditions': {'Collection semi-angle (mrad)': 12.5}}})
    md = hs.load(path).metadata.Acquisition_instrument.TEM
    assert md.beam_energy == 200.0                        # Microscope Info.Voltage (V) / 1e3
    assert md.Detector.EELS.exposure == 0.25              # EELS.Acquisition.Exposure (s) * Number of frames
    assert md.Detector.EELS.collection_angle == 12.5      # extra tags merge beside EELS.Acquisition


def test_without_optional_metadata(tmp_path):
    path = tmp_path / 'plain.dm3'
    write_dm(path, _counts(10), 0.0, 1.0)
    s = hs.load(path)
    assert not s.metadata.has_item('Acquisition_instrument')
    assert s.metadata.Signal.signal_type == 'EELS'


@VERSIONS
def test_file_layout(tmp_path, version):
    "Header: big-endian version, size field (file size - 20 / - 24), little-endian flag; 8 NULs at the end."
    path = tmp_path / f'x.dm{version}'
    write_dm(path, _counts(8), 0.0, 1.0, version=version)
    raw = path.read_bytes()
    n = 4 if version == 3 else 8
    assert struct.unpack('>l', raw[:4])[0] == version
    assert int.from_bytes(raw[4:4 + n], 'big') == len(raw) - (20 if version == 3 else 24)
    assert struct.unpack('>l', raw[4 + n:8 + n])[0] == 1
    assert raw[-8:] == bytes(8)


@pytest.mark.parametrize('bad', [dict(data=np.zeros((3, 4), np.float32)), dict(version=5),
                                 dict(energy_scale_ev=0.0), dict(data=np.zeros(4, np.complex64))])
def test_rejects_what_it_cannot_write(tmp_path, bad):
    kw = dict(data=np.zeros(4, np.float32), energy_offset_ev=0.0, energy_scale_ev=1.0, version=3) | bad
    with pytest.raises((ValueError, TypeError)):
        write_dm(tmp_path / 'bad.dm3', **kw)
