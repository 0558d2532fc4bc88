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

The queries, keys and values come from a projection laid out as the swapped linear form
(``(W x^T)^T``, the fp32 form load-time measurement picks on many CPUs) returns it: a transposed
view. Side by side it times them split as the decoder does (``split_heads``: one copy per layer,
so every per-job call gets a contiguous last dimension and PyTorch's fused CPU kernel) and split
as plain views of that projection (what the decoder did until 2026-12-03: PyTorch falls back to
its math path), and prints the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from einops import rearrange

from benchmarks.machine import describe_machine
from generation.backends.attention import (
    JobAttentionState,
    Segment,
    StepContext,
    attend_own_caches,
    attend_own_texts,
    split_heads,
)

LAYERS, HEADS, HEAD_DIM, TEXT = 24, 16, 64, 12


def _projected(rows: int, positions: int, parts: int, views: bool) -> tuple[torch.Tensor, ...]:
    """``parts`` tensors [rows, heads, positions, d] from a swapped-form projection (a transposed view), split as
    the decoder does or as plain views of it."""
    projected = torch.randn(parts * HEADS * HEAD_DIM, rows * positions).T.reshape(rows, positions, -1)
    if views:
        return tuple(rearrange(projected, "b t (p h d) -> b h p t d", p=parts, h=HEADS).unbind(dim=2))
    return split_heads(projected, HEADS, parts)


def _job(length: int, views: bool) -> JobAttentionState:
    """A job with ``length`` positions in its caches (one cache per layer, as in the model; written by the decoder,
    so contiguous) and its text's keys/values (projected once per job)."""
    def cache() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(2, HEADS, length + 1, HEAD_DIM), torch.randn(2, HEADS, length + 1, HEAD_DIM)

    def text() -> tuple[torch.Tensor, torch.Tensor]:
        (keys,) = _projected(2, TEXT, 1, views)
        (values,) = _projected(2, TEXT, 1, views)
        return keys, values

    return JobAttentionState(caches=[cache() for _ in range(LAYERS)], text=[text() for _ in range(LAYERS)],
                             position=length)


def step_ms(jobs: int, length: int, repeats: int, views: bool = False) -> float:
    """Median ms of one step's per-job attention (every layer's self- and cross-attention loops over the jobs)."""
    context = StepContext([Segment(slice(2 * job, 2 * job + 2), _job(length, views)) for job in range(jobs)],
                          steps=1)
    q, k, v = _projected(2 * jobs, 1, 3, views)

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
        print("the same, split as plain views of the projection (PyTorch's math path), ms (ratio to split_heads):")
        for length in (int(part) for part in args.lengths.split(",")):
            pairs = [(step_ms(count, length, args.repeats, views=True), step_ms(count, length, args.repeats))
                     for count in jobs]
            row = "  ".join(f"{count} jobs {old:6.1f} ({old / new:4.1f}x)" for count, (old, new) in zip(jobs, pairs,
                                                                                                        strict=True))
            print(f"  cache {length:4d}: {row}")


if __name__ == "__main__":
    main()
