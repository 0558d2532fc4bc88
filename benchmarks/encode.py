"""How long encoding takes next to generation.

Run from the repository root:

    .venv/bin/python benchmarks/encode.py [--runs 7] [--gen-rate 0.49] [--gpu-rate 20.0]

It encodes 30 s of 32 kHz mono audio (tones + noise, like a MusicGen output) with
``generation.encode.encode`` at its defaults (loudness normalisation included) in every
format, and prints per format: the median encode time over ``--runs`` runs, the file
size, and that time as a share of the time it takes to generate the same 30 s:

* CPU: 30 s / ``--gen-rate`` audio-seconds per wall-second. The default 0.49 is the
  measured rate of the real musicgen-small architecture at batch 8 on this project's
  2-core CPU machine (our notes), not measured by this script.
* GPU: 30 s / ``--gpu-rate``. The default 20 audio-s/s is an assumption for an
  H100-class GPU, not a measurement.

The goal: encoding <= 2% of generation time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="encodes per format; the median is reported")
    parser.add_argument("--gen-rate", type=float, default=0.49,
                        help="CPU generation speed, audio-seconds per wall-second (measured musicgen-small, batch 8)")
    parser.add_argument("--gpu-rate", type=float, default=20.0,
                        help="GPU generation speed, audio-seconds per wall-second (an H100-class assumption)")
    args = parser.parse_args()

    wav = test_signal()
    encode(wav, SAMPLE_RATE, EncodeOptions())  # warm-up: imports torch/audiocraft, loads codecs
    cpu_gen, gpu_gen = SECONDS / args.gen_rate, SECONDS / args.gpu_rate
    print(f"encoding {SECONDS:g} s of {SAMPLE_RATE} Hz mono, loudness-normalised, median of {args.runs} runs")
    print(f"reference generation time: CPU {cpu_gen:.1f} s (--gen-rate {args.gen_rate:g} audio-s/s, measured), "
          f"GPU {gpu_gen:.2f} s (--gpu-rate {args.gpu_rate:g} audio-s/s, assumed)")
    print(f"{'format':<6} {'kbps':>5} {'encode s':>9} {'size KiB':>9} {'% of CPU gen':>13} {'% of GPU gen':>13}")
    results = {fmt: median_seconds(wav, fmt, args.runs) for fmt in OutputFormat}
    for fmt, (seconds, size) in results.items():
        kbps = CODECS[fmt].default_kbps or "-"
        print(f"{fmt.value:<6} {kbps!s:>5} {seconds:>9.4f} {size / 1024:>9.1f} "
              f"{100 * seconds / cpu_gen:>12.3f}% {100 * seconds / gpu_gen:>12.2f}%")
    print(f"30 s of Opus at the default {CODECS[OutputFormat.OPUS].default_kbps} kbps: "
          f"{results[OutputFormat.OPUS][1] / 1024:.1f} KiB")
    worst = max(seconds for seconds, _ in results.values())
    print(f"goal: encoding <= {GOAL_PERCENT:g}% of generation time")
    for label, gen in (("CPU (measured rate)", cpu_gen), ("GPU (assumed rate)", gpu_gen)):
        share = 100 * worst / gen
        print(f"  slowest format vs {label}: {share:.3f}% -> {'met' if share <= GOAL_PERCENT else 'MISSED'}")

if __name__ == "__main__":
    main()
