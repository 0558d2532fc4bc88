"""Decode steps per second on CUDA: the per-job path vs the static step, eager and as CUDA graphs.

    .venv/bin/python benchmarks/cuda_graphs.py                 # small architecture, 4 s jobs, buckets 1/4/8
    .venv/bin/python benchmarks/cuda_graphs.py --seconds 2 --buckets 1,8

The musicgen-small architecture (24 layers, dim 1024) with random weights, text through a
look-up table over spaCy's offline word tokenizer, on the first CUDA device, as
``MusicGen.get_pretrained`` loads it (fp32 weights under audiocraft's fp16 autocast).
For each path and each bucket of n jobs (n jobs at once, each with its own prompt and
seed), it times the decoder's steps (each step: every job's forward pass and sampling),
after a warm-up run that also captures the graphs, and prints steps/s and job-steps/s.
Then whether each job's codes are identical in every bucket, per path, and how the paths
agree with each other. Audio decoding is skipped (only codes are compared).

Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks.batching import PROMPTS, offline_tokenizer
from benchmarks.machine import describe_machine
from generation.backends.base import GenerationTask
from generation.backends.checkpoints import write_random_checkpoint
from generation.jobs import SamplingParams

PATHS = ("per-job", "static eager", "graphed")
Codes = dict[str, torch.Tensor]


class CodesListener:
    """Takes nothing but cancellations (none) and failures (raised)."""

    def progress(self, job_id: str, done: int, total: int) -> None:
        pass

    def finished(self, job_id: str, wav: np.ndarray, codes: np.ndarray | None = None) -> None:
        pass

    def failed(self, job_id: str, error: BaseException) -> None:
        raise RuntimeError(f"job {job_id} failed") from error

    def is_cancelled(self, job_id: str) -> bool:
        return False


def load_decoder(model_dir: Path, max_jobs: int) -> Any:
    from audiocraft.models import MusicGen

    from generation.backends.decoder import BatchDecoder
    from generation.backends.support import check_supported

    model = MusicGen.get_pretrained(str(model_dir), device="cuda")
    check_supported(model.lm)
    return BatchDecoder(model, max_jobs=max_jobs)


def use_path(decoder: Any, path: str, max_jobs: int) -> None:
    from generation.backends.static_decoding import StaticDecoding

    decoder.static = None
    torch.cuda.empty_cache()
    if path != "per-job":
        decoder.static = StaticDecoding(
            decoder.model, decoder.attention, max_jobs=max_jobs, graphs=path == "graphed",
            min_rows=decoder.plan.linear.min_rows,
        )


def instrument(decoder: Any, codes: Codes) -> Callable[[], tuple[int, float]]:
    """Time every decode step (synchronised); keep each finished job's codes instead of decoding audio."""
    timing = {"steps": 0, "seconds": 0.0}
    step = type(decoder)._step

    def timed_step(ready: list[Any]) -> None:
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(decoder, ready)
        torch.cuda.synchronize()
        timing["seconds"] += time.perf_counter() - start
        timing["steps"] += 1

    def keep_codes(stream: Any, listener: Any, retry_later: Any) -> None:
        codes[stream.job_id] = stream.codes().cpu()
        listener.finished(stream.job_id, np.zeros((1, 0), dtype=np.float32))

    decoder._step = timed_step
    decoder._finish = keep_codes

    def read_and_reset() -> tuple[int, float]:
        steps, seconds = int(timing["steps"]), float(timing["seconds"])
        timing.update(steps=0, seconds=0.0)
        return steps, seconds

    return read_and_reset


def jobs(count: int, seconds: float) -> list[GenerationTask]:
    return [GenerationTask(f"job{i}", PROMPTS[i % len(PROMPTS)], seconds, i, SamplingParams()) for i in range(count)]


def measure(decoder: Any, buckets: list[int], seconds: float) -> tuple[dict[int, float], dict[int, Codes]]:
    """Steps/s per bucket, and every job's codes per bucket, on the decoder's current path."""
    codes: Codes = {}
    read = instrument(decoder, codes)
    rates: dict[int, float] = {}
    by_bucket: dict[int, Codes] = {}
    for bucket in buckets:
        decoder.run(jobs(bucket, 0.2), CodesListener())  # warm-up: kernels, and this bucket's graph
        read()
        codes.clear()
        decoder.run(jobs(bucket, seconds), CodesListener())
        steps, elapsed = read()
        rates[bucket] = steps / elapsed
        by_bucket[bucket] = dict(codes)
    return rates, by_bucket


def same_in_every_bucket(by_bucket: dict[int, Codes]) -> str:
    differing = set()
    for codes in by_bucket.values():
        for job, tokens in codes.items():
            for other in by_bucket.values():
                if job in other and not torch.equal(other[job], tokens):
                    differing.add(job)
    return "yes" if not differing else f"no ({', '.join(sorted(differing))} differ)"


def agreement(a: dict[int, Codes], b: dict[int, Codes]) -> str:
    """The share of tokens two paths agree on, over every job of every bucket."""
    equal = total = 0
    for bucket, codes in a.items():
        for job, tokens in codes.items():
            equal += int((tokens == b[bucket][job]).sum())
            total += tokens.numel()
    return f"{100 * equal / total:.1f}% of tokens equal"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per job (steps = 50 x seconds + 3)")
    parser.add_argument("--buckets", default="1,4,8", help="jobs at once, comma-separated")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"{describe_machine()}; no CUDA device (torch sees none): nothing to measure")
        return 0
    warnings.filterwarnings("ignore")
    buckets = [int(part) for part in args.buckets.split(",")]
    print(f"{describe_machine()}; GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    offline_tokenizer()
    with torch.no_grad(), tempfile.TemporaryDirectory() as directory:
        model_dir = write_random_checkpoint(Path(directory), scale="small", tokenizer="whitespace")
        decoder = load_decoder(model_dir, max(buckets))
        results = {}
        for path in PATHS:
            use_path(decoder, path, max(buckets))
            results[path] = measure(decoder, buckets, args.seconds)
    print(f"steps/s (job-steps/s), {args.seconds:g} s jobs:")
    print(f"  {'':<13}" + "".join(f"{f'{bucket} jobs':>20}" for bucket in buckets))
    for path, (rates, _) in results.items():
        print(f"  {path:<13}" + "".join(f"{f'{rates[b]:.1f} ({rates[b] * b:.0f})':>20}" for b in buckets))
    for path, (_, codes) in results.items():
        print(f"{path}: each job's codes identical in every bucket: {same_in_every_bucket(codes)}")
    print(f"static eager vs graphed: {agreement(results['static eager'][1], results['graphed'][1])}")
    print(f"per-job vs graphed: {agreement(results['per-job'][1], results['graphed'][1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
