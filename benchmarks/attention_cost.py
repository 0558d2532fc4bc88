"""What per-job attention costs a decode step, by jobs in the step and cache length (CPU).

    .venv/bin/python benchmarks/attention_cost.py

The decode loop attends each job over its own fp32 keys/values (``generation.backends.attention``):
that is what keeps a job's music independent of its batch, and the only part of a step whose
cost grows with every job (the linears are padded to one row class). This times the decoder's
own per-job loops (``attend_own_caches``, ``attend_own_texts``) for one step at musicgen-small's
shapes (24 layers, 16 heads of 64, a cond and a null row per job, 12 text positions), each layer
with its own caches as in the model, and prints ms per step and the ratio to one job at the same
length. On a CPU each job costs its calls plus the memory traffic of its caches; that is why a
long request runs slower beside others on 2 cores (``benchmarks/continuous.py``), where a GPU's
step cost should be nearly flat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe_machine
from generation.backends.attention import JobAttentionState, Segment, StepContext, attend_own_caches, attend_own_texts

LAYERS, HEADS, HEAD_DIM, TEXT = 24, 16, 64, 12


def _job(length: int) -> JobAttentionState:
    """A job with ``length`` positions in its caches (one cache per layer, as in the model) and its text's keys."""
    def pair(positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(2, HEADS, positions, HEAD_DIM), torch.randn(2, HEADS, positions, HEAD_DIM)

    return JobAttentionState(caches=[pair(length + 1) for _ in range(LAYERS)],
                             text=[pair(TEXT) for _ in range(LAYERS)], position=length)


def step_ms(jobs: int, length: int, repeats: int) -> float:
    """Median ms of one step's per-job attention (every layer's self- and cross-attention loops over the jobs)."""
    context = StepContext([Segment(slice(2 * job, 2 * job + 2), _job(length)) for job in range(jobs)], steps=1)
    q, k, v = (torch.randn(2 * jobs, HEADS, 1, HEAD_DIM) for _ in range(3))

    def once() -> None:
        for layer in range(LAYERS):  # the loops JobSelfAttention and JobCrossAttention run
            attend_own_caches(q, k, v, context, layer, as_float32=False)
            attend_own_texts(q, context, layer)

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="1,2,4,7", help="jobs per step, comma-separated (the first is the base)")
    parser.add_argument("--lengths", default="50,200,400", help="cached positions (50 per second of audio)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(describe_machine())
    jobs = [int(part) for part in args.jobs.split(",")]
    print(f"per-job attention of one decode step, musicgen-small shapes, ms (ratio to {jobs[0]} job(s)):")
    with torch.no_grad():
        for length in (int(part) for part in args.lengths.split(",")):
            cells = [step_ms(count, length, args.repeats) for count in jobs]
            row = "  ".join(f"{count} jobs {ms:6.1f} ({ms / cells[0]:4.1f}x)" for count, ms in zip(jobs, cells,
                                                                                                 strict=True))
            print(f"  cache {length:4d}: {row}")


if __name__ == "__main__":
    main()
