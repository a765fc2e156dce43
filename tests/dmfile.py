"""Minimal clean-room writer of Gatan DigitalMicrograph (DM3/DM4) files, for test fixtures only.

Written from public, reverse-engineered descriptions of the format and checked against what
rosettasciio's ``digitalmicrograph`` reader (used by ``hyperspy.api.load``) expects. It writes one
EELS spectrum ``(n_E,)`` or one EELS spectrum image ``(ny, nx, n_E)`` and nothing more.

Layout of a file (integers in the header, tag headers and type descriptions are big-endian;
"len" is 4 bytes in DM3 and 8 bytes in DM4; tag *values* use the byte order of the file, here
always little-endian, because rosettasciio reads the image data with the native numpy dtype)::

    header     version (u4) | len: file size - 20 (DM3) or - 24 (DM4) | little-endian flag (u4 = 1)
    root group sorted (u1) | open (u1) | len: number of entries | entries...
    trailer    8 zero bytes
    entry      kind (u1: 20 group, 21 data) | name length (i2) | name (latin-1)
               group: [DM4: len: byte size of the rest] sorted | open | len: n | entries...
               data:  [DM4: len: byte size of the rest] '%%%%' | len: k | k type lens | value
    type info  simple value: [code]; array of simple values: [20, element code, count]

Strings are stored, as DM does, as arrays of uint16 characters (code 4). DM lists image
dimensions fastest-first; rosettasciio reverses them into a C-order numpy shape. A spectrum image
is stored as DM does, as (x, y, E) fastest-first, i.e. numpy (E, y, x); with ``Meta Data.Format =
'Spectrum image'`` rosettasciio turns it back into a Signal1D with data (ny, nx, n_E).
Calibration: DM keeps ``Origin`` (in pixels) and ``Scale``; the reader's offset is -Origin*Scale.
"""
import struct
from pathlib import Path

import numpy as np

__all__ = ['write_dm']

# DM's codes for tag value types, from numpy dtypes (bool 8, int8 10 'octet', int64/uint64 DM4 only).
_TAG_CODE = {np.dtype('int16'): 2, np.dtype('int32'): 3, np.dtype('uint16'): 4, np.dtype('uint32'): 5,
             np.dtype('float32'): 6, np.dtype('float64'): 7, np.dtype('bool'): 8, np.dtype('int8'): 10,
             np.dtype('uint8'): 10, np.dtype('int64'): 11, np.dtype('uint64'): 12}
# DM's image ``DataType`` codes, from numpy dtypes.
_IMAGE_CODE = {np.dtype('int16'): 1, np.dtype('float32'): 2, np.dtype('uint8'): 6, np.dtype('int32'): 7,
               np.dtype('int8'): 9, np.dtype('uint16'): 10, np.dtype('uint32'): 11, np.dtype('float64'): 12}


class _Encoder:
    """Serialises a nested Python tag tree: dict = named group, list = group of unnamed entries,
    str = uint16 string, bool/int/float/numpy scalar = simple value, 1-D ndarray = array."""

    def __init__(self, version):
        if version not in (3, 4):
            raise ValueError(f'DM version must be 3 or 4, not {version!r}')
        self.version = version
        self.len_fmt = '>l' if version == 3 else '>q'

    def _len(self, n):
        return struct.pack(self.len_fmt, n)

    def group(self, entries):
        "Group body: sorted, open, entry count, entries (a list of (name, value) pairs)."
        out = [struct.pack('>BB', 1, 0), self._len(len(entries))]
        out += [self.entry(name, value) for name, value in entries]
        return b''.join(out)

    def entry(self, name, value):
        raw = name.encode('latin-1')
        head = struct.pack('>bh', 20 if isinstance(value, (dict, list)) else 21, len(raw)) + raw
        if isinstance(value, dict):
            body = self.group(list(value.items()))
        elif isinstance(value, list):
            body = self.group([('', v) for v in value])
        else:
            info, payload = self.value(value)
            body = b'%%%%' + self._len(len(info)) + b''.join(self._len(i) for i in info) + payload
        # DM4 precedes every group and data body with its byte size; DM3 does not.
        return head + (self._len(len(body)) if self.version == 4 else b'') + body

    @staticmethod
    def value(v):
        "(type description, little-endian payload) of one tag value."
        if isinstance(v, str):
            if any(ord(c) > 0xFFFF for c in v):
                raise ValueError('only BMP characters fit in DM uint16 strings')
            chars = np.array([ord(c) for c in v], dtype='<u2')
            return [20, 4, chars.size], chars.tobytes()
        if isinstance(v, np.ndarray):
            if v.ndim != 1:
                raise ValueError('array tag values must be 1-D')
            return [20, _TAG_CODE[v.dtype.newbyteorder('=')], v.size], v.astype(v.dtype.newbyteorder('<')).tobytes()
        if isinstance(v, (bool, np.bool_)):
            scalar = np.bool_(v)
        elif isinstance(v, (int, float)) and not isinstance(v, np.generic):
            scalar = np.int32(v) if isinstance(v, int) else np.float64(v)
        elif isinstance(v, np.generic):
            scalar = v
        else:
            raise TypeError(f'cannot store {type(v).__name__} in a DM tag')
        return [_TAG_CODE[scalar.dtype]], scalar.astype(scalar.dtype.newbyteorder('<')).tobytes()


def _dimension(offset, scale, units):
    "DM calibration of one axis: Origin is the (fractional) pixel index where the value is 0."
    if not scale:
        raise ValueError(f'the scale of the {units} axis must be non-zero')
    return {'Origin': -float(offset) / float(scale), 'Scale': float(scale), 'Units': units}


def write_dm(path, data, energy_offset_ev, energy_scale_ev, *, version=3, nav_scale_nm=1.0,
             title='EELS', beam_energy_kev=None, exposure_s=None, image_tags=None):
    """Write an EELS spectrum ``(n_E,)`` or spectrum image ``(ny, nx, n_E)`` as a DM3/DM4 file.

    ``data`` keeps its dtype if DM has it (float32 counts expected); the energy axis is
    ``energy_offset_ev + energy_scale_ev * arange(n_E)`` in 'eV' (stored as float64 Origin/Scale, so
    the offset read back is ``-(-offset/scale)*scale``: exact for dyadic values, else to a few ulp),
    navigation axes start at 0 with step ``nav_scale_nm`` in 'nm'. Tags written, under GMS's names:
    ``ImageTags.Meta Data`` (Signal 'EELS', Format 'Spectrum' / 'Spectrum image'),
    ``Microscope Info.Voltage`` (V) when ``beam_energy_kev`` is given, and
    ``EELS.Acquisition.Exposure (s)`` with ``Number of frames`` = 1 when ``exposure_s`` is given.
    ``image_tags`` (a nested dict) is merged, one level deep, into ``ImageTags``.
    """
    data = np.asarray(data)
    if data.dtype.newbyteorder('=') not in _IMAGE_CODE:
        raise TypeError(f'DM has no image data type for {data.dtype}')
    data = data.astype(data.dtype.newbyteorder('='), copy=False)
    energy = _dimension(energy_offset_ev, energy_scale_ev, 'eV')
    if data.ndim == 1:
        fmt, flat, dims, calib = 'Spectrum', data, [data.shape[0]], [energy]
    elif data.ndim == 3:
        ny, nx, ne = data.shape
        # DM order (x, y, E) fastest-first == numpy C order (E, y, x).
        fmt, flat, dims = 'Spectrum image', np.transpose(data, (2, 0, 1)), [nx, ny, ne]
        calib = [_dimension(0.0, nav_scale_nm, 'nm'), _dimension(0.0, nav_scale_nm, 'nm'), energy]
    else:
        raise ValueError(f'data must be (n_E,) or (ny, nx, n_E), got shape {data.shape}')

    tags = {'Meta Data': {'Signal': 'EELS', 'Format': fmt}}
    if beam_energy_kev is not None:
        tags['Microscope Info'] = {'Voltage': float(beam_energy_kev) * 1e3}
    if exposure_s is not None:
        tags['EELS'] = {'Acquisition': {'Exposure (s)': float(exposure_s), 'Number of frames': 1}}
    for key, value in (image_tags or {}).items():
        tags[key] = {**tags[key], **value} if isinstance(tags.get(key), dict) and isinstance(value, dict) else value

    image = {
        'ImageData': {
            'Calibrations': {'Brightness': {'Origin': 0.0, 'Scale': 1.0, 'Units': 'Counts'},
                             'Dimension': calib, 'DisplayCalibratedUnits': True},
            'Data': np.ascontiguousarray(flat).ravel(),
            'DataType': _IMAGE_CODE[data.dtype],
            'Dimensions': [np.uint32(n) for n in dims],
            'PixelDepth': data.dtype.itemsize,
        },
        'ImageTags': tags,
        'Name': title,
    }
    enc = _Encoder(version)
    body = enc.group([('ImageList', [image])]) + bytes(8)  # root group (no size field), then 8 NULs
    header_len = 12 if version == 3 else 16
    total = header_len + len(body)
    header = struct.pack('>l', version) + enc._len(total - (20 if version == 3 else 24)) + struct.pack('>l', 1)
    Path(path).write_bytes(header + body)
