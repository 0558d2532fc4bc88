"""An encoded result as bytes in Redis: a JSON header, a NUL, then the audio, then the codes if kept.

What crosses the process boundary is data: the bot rebuilds the same
:class:`~generation.encode.EncodedAudio` the worker's engine made. A result that keeps its
codes says so in its header (their shape and dtype, and where the audio ends); a blob
without that (one written before codes were kept) is all audio.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from generation.encode import EncodedAudio
from generation.jobs import OutputFormat

_SEPARATOR = b"\0"  # JSON text never holds a raw NUL, so the first one ends the header
_COMPACT = np.dtype("<u2")  # codes below 2**16 (every EnCodec codebook's): a quarter of int64's bytes
_WIDE = np.dtype("<i8")  # any other codes; little-endian whatever the machine


def pack(audio: EncodedAudio) -> bytes:
    header: dict[str, Any] = {
        "format": audio.format.value, "sample_rate": audio.sample_rate, "duration": audio.duration,
        "bitrate_kbps": audio.bitrate_kbps,
    }
    codes = b""
    if audio.codes is not None:
        array = np.ascontiguousarray(audio.codes, dtype=_wire_dtype(audio.codes))
        header["codes"] = {"shape": list(array.shape), "dtype": array.dtype.str, "audio_bytes": len(audio.data)}
        codes = array.tobytes()
    return json.dumps(header).encode() + _SEPARATOR + audio.data + codes


def _wire_dtype(codes: np.ndarray) -> np.dtype[Any]:
    fits = codes.size == 0 or (int(codes.min()) >= 0 and int(codes.max()) <= np.iinfo(_COMPACT).max)
    return _COMPACT if fits else _WIDE


def unpack(blob: bytes) -> EncodedAudio:
    header, separator, data = blob.partition(_SEPARATOR)
    if not separator:
        raise ValueError("not a packed result: no header")
    fields = json.loads(header)
    codes = None
    if fields.get("codes") is not None:
        data, codes = _split_codes(data, fields["codes"])
    return EncodedAudio(
        data=data, format=OutputFormat(fields["format"]), sample_rate=int(fields["sample_rate"]),
        duration=float(fields["duration"]), bitrate_kbps=fields["bitrate_kbps"], codes=codes,
    )


def _split_codes(data: bytes, header: dict[str, Any]) -> tuple[bytes, np.ndarray]:
    """The audio and the codes of a packed result's body, as its header describes them."""
    split = int(header["audio_bytes"])
    dtype = np.dtype(header["dtype"])
    shape = tuple(int(n) for n in header["shape"])
    if not 0 <= split <= len(data) or len(data) - split != dtype.itemsize * int(np.prod(shape)):
        raise ValueError("a packed result's codes do not match its header")
    codes = np.frombuffer(data[split:], dtype=dtype).reshape(shape).astype(np.int64)
    return data[:split], codes
