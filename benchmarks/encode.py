"""How long encoding takes next to generation, both measured in the same run.

Run from the repository root:

    .venv/bin/python benchmarks/encode.py [--runs 7] [--gen-seconds 2] [--gen-batch 8]

It encodes 30 s of 32 kHz mono audio (tones + noise, like a MusicGen output) with
``generation.encode.encode`` at its defaults (loudness normalisation included) in every
format, and prints per format the median encode time over ``--runs`` runs, the file
size, and that time as a share of the time generating those 30 s takes. Generation is
measured here too: the real musicgen-small architecture (random weights) renders a
batch of ``--gen-batch`` jobs of ``--gen-seconds`` each on this machine, and 30 s are
costed at that aggregate rate -- an underestimate of generation time, since each step
gets slower as a clip grows, so the share printed errs high.

The goal: encoding <= 2% of generation time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.machine import describe_machine
from generation.encode import CODECS, EncodeOptions, encode
from generation.jobs import OutputFormat

SAMPLE_RATE = 32000
SECONDS = 30.0
GOAL_PERCENT = 2.0


def test_signal(seconds: float = SECONDS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A chord with a slow tremolo, a bass line and some noise: harder to compress than a sine."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0)) / 4
    bass_hz = np.where(np.floor(t * 2) % 2 == 0, 55.0, 82.4)  # two notes, 0.5 s each
    bass = np.sin(2 * np.pi * np.cumsum(bass_hz) / sample_rate)
    tremolo = 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    hiss = np.random.default_rng(0).standard_normal(t.shape)
    return (0.3 * chord * tremolo + 0.2 * bass + 0.05 * hiss)[None, :].astype(np.float32)


def median_seconds(wav: np.ndarray, fmt: OutputFormat, runs: int) -> tuple[float, int]:
    timings, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        size = len(encode(wav, SAMPLE_RATE, EncodeOptions(format=fmt)).data)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings), size


def generation_rate(seconds: float, batch: int) -> float:
    """Audio-seconds per wall-second of the musicgen-small architecture for a batch, here."""
    from generation.backends.base import GenerationTask
    from generation.backends.checkpoints import write_random_checkpoint
    from generation.backends.musicgen import MusicGenBackend
    from generation.jobs import SamplingParams

    class Quiet:
        def progress(self, *_: object) -> None: ...
        def finished(self, *_: object) -> None: ...
        def failed(self, *_: object) -> None: ...
        def is_cancelled(self, _: str) -> bool:
            return False

    with tempfile.TemporaryDirectory() as tmp:
        backend = MusicGenBackend(str(write_random_checkpoint(Path(tmp) / "small", scale="small")), device="cpu")
        backend.load()
    prompt = "lofi slow bpm electro chill"
    tasks = [GenerationTask(f"job{i}", prompt, seconds, i, SamplingParams()) for i in range(batch)]
    start = time.perf_counter()
    backend.generate(tasks, Quiet())
    return batch * seconds / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="encodes per format; the median is reported")
    parser.add_argument("--gen-seconds", type=float, default=2.0, help="audio per job to measure the rate")
    parser.add_argument("--gen-batch", type=int, default=8, help="jobs in the batch that measures the rate")
    args = parser.parse_args()
    print(describe_machine())
    warnings.filterwarnings("ignore")

    rate = generation_rate(args.gen_seconds, args.gen_batch)
    generation = SECONDS / rate
    wav = test_signal()
    encode(wav, SAMPLE_RATE, EncodeOptions())  # warm-up: loads codecs
    print(f"generation, musicgen-small architecture, batch of {args.gen_batch}, CPU: {rate:.3f} audio-s/s "
          f"-> {generation:.0f} s for {SECONDS:g} s of audio")
    print(f"encoding {SECONDS:g} s of {SAMPLE_RATE} Hz mono, loudness-normalised, median of {args.runs} runs")
    print(f"{'format':<6} {'kbps':>5} {'encode s':>9} {'size KiB':>9} {'% of generation':>16}")
    results = {fmt: median_seconds(wav, fmt, args.runs) for fmt in OutputFormat}
    for fmt, (seconds, size) in results.items():
        kbps = CODECS[fmt].default_kbps or "-"
        print(f"{fmt.value:<6} {kbps!s:>5} {seconds:>9.4f} {size / 1024:>9.1f} {100 * seconds / generation:>15.3f}%")
    print(f"30 s of Opus at the default {CODECS[OutputFormat.OPUS].default_kbps} kbps: "
          f"{results[OutputFormat.OPUS][1] / 1024:.1f} KiB")
    share = 100 * max(seconds for seconds, _ in results.values()) / generation
    print(f"goal: encoding <= {GOAL_PERCENT:g}% of generation time: slowest format {share:.3f}% "
          f"-> {'met' if share <= GOAL_PERCENT else 'MISSED'}")

if __name__ == "__main__":
    main()
