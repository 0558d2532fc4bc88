"""The waveform picture: a 1200×240 PNG under 200 KB, whatever the audio."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from generation import picture
from generation.encode import EncodeOptions, encode
from generation.jobs import Normalization, OutputFormat
from generation.picture import MAX_BYTES, PictureError, picture_of, render

SR = 32000
rng = np.random.default_rng(11)


def opened(png: bytes) -> Image.Image:
    """The PNG decoded by Pillow, after checking the limits every picture keeps."""
    assert len(png) < MAX_BYTES <= 200_000
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every pixel: a truncated or corrupt file fails here
    assert image.format == "PNG"
    assert image.size == (1200, 240)
    return image


def colours(image: Image.Image) -> np.ndarray:
    """Each pixel's palette index."""
    assert image.mode == "P"
    return np.asarray(image)


def noise(seconds: float, channels: int = 1, level: float = 1.0) -> np.ndarray:
    return rng.uniform(-level, level, (channels, int(seconds * SR))).astype(np.float32)


CASES = {
    "silence, mono": np.zeros((1, 10 * SR), np.float32),
    "silence, stereo": np.zeros((2, 10 * SR), np.float32),
    "loud noise, mono": noise(10.0),
    "loud noise, stereo": noise(10.0, channels=2),
    "clipping noise": 4 * noise(5.0),
    "a 30 s track, mono": noise(30.0, level=0.3) * np.sin(np.linspace(0, 60, 30 * SR, dtype=np.float32)) ** 2,
    "a 30 s track, stereo": noise(30.0, channels=2, level=0.5),
    "one sample": np.array([[0.5]], np.float32),
    "fewer samples than columns": noise(0.01),
    "no samples": np.zeros((1, 0), np.float32),
    "one dimension": noise(2.0)[0],
    "NaN and inf": np.array([[np.nan, np.inf, -np.inf, 0.2] * 1000], np.float32),
}


@pytest.mark.parametrize("wav", CASES.values(), ids=CASES.keys())
def test_every_picture_is_a_small_1200_by_240_png(wav: np.ndarray) -> None:
    opened(render(wav))


def test_silence_is_a_flat_line_and_noise_fills_the_lanes() -> None:
    silent = colours(opened(render(np.zeros((1, SR), np.float32))))
    assert set(np.unique(silent)) == {picture.BACKGROUND, picture.AXIS}
    assert (silent == picture.AXIS).sum() == 1200  # one row

    loud = colours(opened(render(noise(5.0))))
    assert (loud != picture.BACKGROUND).mean() > 0.95
    quiet = colours(opened(render(noise(5.0, level=0.1))))
    assert 0.02 < (quiet != picture.BACKGROUND).mean() < 0.2  # a fixed scale: quiet stays small


def test_stereo_has_a_lane_per_channel() -> None:
    left_only = np.stack([noise(3.0)[0], np.zeros(3 * SR, np.float32)])
    pixels = colours(opened(render(left_only)))
    top, bottom = pixels[:120], pixels[120:]
    assert (top == picture.PEAK).any()
    assert set(np.unique(bottom)) == {picture.BACKGROUND, picture.AXIS}


def test_the_worst_pixels_still_fit() -> None:
    """Incompressible pixels: the 2-bit palette alone keeps the file under the limit."""
    pixels = rng.integers(0, len(picture.PALETTE), (240, 1200)).astype(np.uint8)
    assert len(picture._png(pixels)) < MAX_BYTES
    jagged = noise(30.0) * rng.uniform(0, 1, 1200).repeat(30 * SR // 1200)  # every column a new height
    opened(render(jagged))


@pytest.mark.parametrize("fmt", [OutputFormat.OPUS, OutputFormat.MP3, OutputFormat.WAV, OutputFormat.FLAC])
@pytest.mark.parametrize("channels", [1, 2])
def test_a_picture_of_an_encoded_file(fmt: OutputFormat, channels: int) -> None:
    audio = encode(noise(3.0, channels, level=0.5), SR, EncodeOptions(fmt, None, Normalization.NONE))
    pixels = colours(opened(picture_of(audio.data)))
    assert (pixels == picture.PEAK).any()


def test_a_30_s_opus_track() -> None:
    audio = encode(noise(30.0, 2, level=0.5), SR, EncodeOptions(OutputFormat.OPUS, None, Normalization.NONE))
    opened(picture_of(audio.data))


def test_what_is_not_audio_is_a_picture_error() -> None:
    with pytest.raises(PictureError):
        picture_of(b"not audio at all")
    with pytest.raises(PictureError):
        render(np.zeros((1, 2, 3), np.float32))
