"""What per-job attention costs a decode step, by jobs in the step and cache length (CPU).

    .venv/bin/python benchmarks/attention_cost.py

The decode loop attends each job over its own fp32 keys/values (``generation.backends.attention``):
that is what keeps a job's music independent of its batch, and the only part of a step whose
cost grows with every job (the linears are padded to one row class). This times the per-job
calls of one step at musicgen-small's shapes (24 layers, 16 heads of 64, a cond and a null
row per job, 12 text positions), each layer with its own caches as in the model, and prints
ms per step and the ratio to one job at the same length. On a CPU the growth is the memory
traffic of the caches; it is why a long request runs slower beside others on 2 cores
(``benchmarks/continuous.py``), where a GPU's step cost is nearly flat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe_machine

LAYERS, HEADS, HEAD_DIM, TEXT = 24, 16, 64, 12


def step_ms(jobs: int, length: int, repeats: int) -> float:
    """Median ms of one step's per-job attention calls (self over ``length`` cached positions, and cross)."""
    capacity = length + 1
    caches = [[(torch.randn(2, HEADS, capacity, HEAD_DIM), torch.randn(2, HEADS, capacity, HEAD_DIM))
               for _ in range(jobs)] for _ in range(LAYERS)]
    texts = [[(torch.randn(2, HEADS, TEXT, HEAD_DIM), torch.randn(2, HEADS, TEXT, HEAD_DIM))
              for _ in range(jobs)] for _ in range(LAYERS)]
    q, k = torch.randn(2 * jobs, HEADS, 1, HEAD_DIM), torch.randn(2 * jobs, HEADS, 1, HEAD_DIM)

    def once() -> None:
        for layer in range(LAYERS):  # as JobSelfAttention / JobCrossAttention do it, per job
            out = torch.zeros_like(q)
            for job, (keys, values) in enumerate(caches[layer]):
                rows = slice(2 * job, 2 * job + 2)
                keys[:, :, length:capacity] = k[rows]
                values[:, :, length:capacity] = k[rows]
                out[rows] = F.scaled_dot_product_attention(q[rows], keys, values)
            cross = torch.zeros_like(q)
            for job, (keys, values) in enumerate(texts[layer]):
                rows = slice(2 * job, 2 * job + 2)
                cross[rows] = F.scaled_dot_product_attention(q[rows], keys, values)

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
