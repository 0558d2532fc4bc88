"""An encoded result as bytes in Redis: a JSON header, a NUL, then the audio.

What crosses the process boundary is data: the bot rebuilds the same
:class:`~generation.encode.EncodedAudio` the worker's engine made.
"""

from __future__ import annotations

import json

from generation.encode import EncodedAudio
from generation.jobs import OutputFormat

_SEPARATOR = b"\0"  # JSON text never holds a raw NUL, so the first one ends the header


def pack(audio: EncodedAudio) -> bytes:
    header = {
        "format": audio.format.value, "sample_rate": audio.sample_rate, "duration": audio.duration,
        "bitrate_kbps": audio.bitrate_kbps,
    }
    return json.dumps(header).encode() + _SEPARATOR + audio.data


def unpack(blob: bytes) -> EncodedAudio:
    header, separator, data = blob.partition(_SEPARATOR)
    if not separator:
        raise ValueError("not a packed result: no header")
    fields = json.loads(header)
    return EncodedAudio(
        data=data, format=OutputFormat(fields["format"]), sample_rate=int(fields["sample_rate"]),
        duration=float(fields["duration"]), bitrate_kbps=fields["bitrate_kbps"],
    )
