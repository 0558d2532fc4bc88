"""A waveform picture of a track: a small PNG posted in its card.

:func:`render` is pure and blocking (the bot runs it in a worker thread): PCM in, PNG bytes out.
:func:`picture_of` decodes an encoded file first, so a track from a Redis worker (bytes only) gets
the same picture as one made in process.

The size limit holds by construction: the PNG is a palette image of at most 16 colours, which
Pillow stores at 4 bits a pixel, so even incompressible pixels take 1200 × 240 / 2 = 144,000 bytes
(plus one filter byte a row and a few hundred bytes of chunks), under :data:`MAX_BYTES`. It is
still checked.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from generation.encode import decode
from generation.errors import GenerationError

WIDTH, HEIGHT = 1200, 240
MAX_BYTES = 200_000
FILENAME = "waveform.png"

# Palette indices, and their colours (Discord's dark theme and the card's blurple).
BACKGROUND, AXIS, PEAK, RMS = 0, 1, 2, 3
PALETTE = (
    (43, 45, 49),  # background
    (78, 80, 88),  # centre line
    (88, 101, 242),  # peaks: the highest and lowest sample of each column
    (165, 176, 255),  # RMS: the loudness of each column
)


class PictureError(GenerationError):
    """The waveform picture could not be made (the track is posted without it)."""


def picture_of(data: bytes) -> bytes:
    """The waveform PNG of an encoded audio file."""
    try:
        wav, _ = decode(data)
    except Exception as exc:  # PyAV's errors, and an empty stream
        raise PictureError(f"could not decode the audio for its picture: {exc}") from exc
    return render(wav)


def render(wav: npt.NDArray[np.floating[Any]]) -> bytes:
    """A ``WIDTH`` × ``HEIGHT`` PNG of ``wav`` (float, ``(channels, samples)`` or ``(samples,)``, in [-1, 1]).

    One lane per channel (mono: one, stereo: left above right), each column showing its samples' peaks
    and RMS on a fixed scale (silence stays flat). At most :data:`MAX_BYTES` long.
    """
    audio = np.nan_to_num(np.asarray(wav, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise PictureError(f"expected audio of shape (channels, samples), got {audio.shape}")
    audio = np.clip(audio[:2], -1.0, 1.0)  # more than two channels: the first two
    lanes = audio.shape[0]
    pixels = np.full((HEIGHT, WIDTH), BACKGROUND, dtype=np.uint8)
    lane = HEIGHT // lanes
    for channel in range(lanes):
        _draw_lane(pixels[channel * lane:(channel + 1) * lane], audio[channel])
    png = _png(pixels)
    if len(png) > MAX_BYTES:  # cannot happen at 4 bits a pixel; checked all the same
        raise PictureError(f"the waveform picture is {len(png)} bytes, over {MAX_BYTES}")
    return png


def _draw_lane(lane: npt.NDArray[np.uint8], samples: npt.NDArray[np.float32]) -> None:
    """Draw one channel into ``lane`` (a view of the picture's rows), in place."""
    height = lane.shape[0]
    half = (height - 1) / 2
    centre = round(half)
    lane[centre, :] = AXIS
    if samples.size == 0:
        return
    low, high, rms = _columns(samples)
    rows = np.arange(height)[:, None]

    def row(value: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:  # +1 is the top row, -1 the bottom one
        return np.asarray(np.rint(half - value * (half - 1)), dtype=np.int64)

    high, low = np.maximum(high, 0.0), np.minimum(low, 0.0)  # from the centre line: a lone sample shows too
    peak_top, peak_bottom = row(high), row(low)
    lane[(rows >= peak_top) & (rows <= peak_bottom) & (peak_bottom > peak_top)] = PEAK
    rms_top, rms_bottom = row(np.minimum(rms, high)), row(np.maximum(-rms, low))
    lane[(rows >= rms_top) & (rows <= rms_bottom) & (rms_bottom > rms_top)] = RMS


def _columns(samples: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], ...]:
    """Per picture column: the lowest sample, the highest, and the RMS (a short track repeats samples)."""
    starts = np.linspace(0, samples.size, WIDTH, endpoint=False).astype(np.int64)
    low = np.minimum.reduceat(samples, starts)
    high = np.maximum.reduceat(samples, starts)
    squares = np.add.reduceat(samples.astype(np.float64) ** 2, starts)
    counts = np.diff(np.append(starts, samples.size))
    counts = np.where(counts > 0, counts, 1)  # an empty column (fewer samples than columns) is its one sample
    rms = np.sqrt(squares / counts).astype(np.float32)
    return low, high, rms


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    image = Image.fromarray(pixels)
    image.putpalette([value for colour in PALETTE for value in colour])  # 4 colours: stored at 2 bits a pixel
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
