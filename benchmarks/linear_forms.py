"""The CPU cost of one linear layer per form and precision, at musicgen-small's shapes.

    .venv/bin/python benchmarks/linear_forms.py              # ~1 minute on 2 busy cores
    .venv/bin/python benchmarks/linear_forms.py --threads 1

For each weight shape of a musicgen-small decode step (packed in_proj, out_proj / the
cross-attention's q, feed-forward in and out, an output head) and each row count (2 rows
are one job with classifier-free guidance; 4, 12 and 16 are what padding makes of a step),
it times, side by side in one run (calls interleaved, fastest of ``--repeats`` kept):

* ``F.linear``: ``x @ W.T`` (stock PyTorch / audiocraft),
* ``swapped``: ``(W @ x.T).T``,
* ``packed``: oneDNN's matmul on the weight reordered once (``mkldnn._linear_pointwise``; where
  this PyTorch has oneDNN),
* ``bf16``: bf16 weights, the input cast to bf16 and the output back (precision's Bf16Linear, on
  oneDNN's reordered weights where this PyTorch has them, as the bf16 mode runs),
* ``int8``: qint8 weights, rows scaled one by one (precision's Int8Linear),
* ``int8 stock``: plain ``quantize_dynamic`` (one activation scale for all rows), for reference.

Then the linears of one whole decode step (24 layers, 4 heads) at 1 and 8 jobs, each form
padded as its row classes need on this machine, and what ``apply_precision`` picks here.

Each weight is timed call after call, so it may stay in the CPU's caches, which a real step
(hundreds of MB of weights) never does: the ratios show the kernels, ``benchmarks/decode.py``
the loop.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.ao.quantization import default_dynamic_qconfig
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_model
from generation.backends.precision import (
    Bf16Linear,
    Int8Linear,
    apply_precision,
    linear,
    pack_weight,
    packed_available,
    row_padding,
)

D, FF, CARD, LAYERS, HEADS = 1024, 4096, 2048, 24, 4
SHAPES = {  # name: (out, in), count per decode step
    "in_proj": ((3 * D, D), LAYERS),
    "out_proj, cross q/out": ((D, D), 3 * LAYERS),
    "ff in": ((FF, D), LAYERS),
    "ff out": ((D, FF), LAYERS),
    "head": ((CARD, D), HEADS),
}
ROWS = (2, 4, 12, 16)
Compute = Callable[[torch.Tensor], torch.Tensor]


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [flag for flag in flags if flag.startswith(("avx512", "amx")) or flag in ("avx2", "avx_vnni")]
    return " ".join(sorted(wanted)) or "none of avx2/avx512/amx"


def stock_int8(weight: torch.Tensor) -> Compute:
    plain = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    plain.weight = nn.Parameter(weight, requires_grad=False)
    plain.qconfig = default_dynamic_qconfig  # type: ignore[assignment]
    return quantized_dynamic.Linear.from_float(plain)


def variants(weight: torch.Tensor) -> dict[str, Compute]:
    packed: dict[str, Compute] = {}
    if packed_available():
        packed["packed"] = partial(linear, weight=pack_weight(weight), bias=None, form="packed")
    return {
        "F.linear": lambda x: F.linear(x, weight),
        "swapped": lambda x: linear(x, weight, None, "swapped"),
        **packed,
        "bf16": Bf16Linear(weight, None, "packed" if packed else "linear"),  # as apply_precision builds it
        "int8": Int8Linear(weight, None),
        "int8 stock": stock_int8(weight),
    }


def time_side_by_side(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def per_linear(repeats: int) -> None:
    print(f"\nms per linear (fastest of {repeats}), and the ratio to F.linear at the same rows:")
    names = list(variants(torch.zeros(2, 2)))
    print(f"  {'shape':<28}{'rows':>5}  " + "".join(f"{name:>20}" for name in names))
    generator = torch.Generator().manual_seed(0)
    for label, ((out, inputs), _) in SHAPES.items():
        weight = torch.randn(out, inputs, generator=generator) / inputs**0.5
        computes = variants(weight)
        for rows in ROWS:
            x = torch.randn(rows, inputs, generator=generator)
            best = time_side_by_side({name: (lambda c=c, x=x: c(x)) for name, c in computes.items()}, repeats)
            cells = "".join(f"{best[name] * 1e3:>11.3f} ({best['F.linear'] / best[name]:>4.2f}x)" for name in names)
            print(f"  {label + f' {out}x{inputs}':<28}{rows:>5}  {cells}")


def whole_step(repeats: int) -> None:
    """All linears of one decode step, per variant, at its padded rows for 1 and 8 jobs."""
    generator = torch.Generator().manual_seed(1)
    probe = torch.randn(D, D, generator=generator) / D**0.5
    weights = {label: torch.randn(*shape, generator=generator) / shape[1] ** 0.5
               for label, (shape, _) in SHAPES.items()}
    computes = {label: variants(weight) for label, weight in weights.items()}
    names = [name for name in computes["head"] if name != "int8 stock"]  # stock int8 has no row class at all
    paddings = {name: row_padding(variants(probe)[name], D) for name in names}
    print("\nrow padding each needs here (probed):")
    for name, padding in paddings.items():
        print(f"  {name:<10} at least {padding.min_rows} rows, a multiple of {padding.row_multiple}")
    print("\nall linears of one musicgen-small decode step (24 layers, 4 heads), ms, padded as above:")
    for jobs in (1, 8):
        totals = dict.fromkeys(names, 0.0)
        for label, (_, count) in SHAPES.items():
            inputs = weights[label].shape[1]
            calls = {}
            for name in names:
                x = torch.randn(paddings[name].padded_rows(2 * jobs), inputs, generator=generator)
                calls[name] = lambda c=computes[label][name], x=x: c(x)
            for name, seconds in time_side_by_side(calls, repeats).items():
                totals[name] += seconds * count
        cells = "  ".join(f"{name} {totals[name] * 1e3:.1f} ({totals['F.linear'] / totals[name]:.2f}x)"
                          for name in names)
        print(f"  {jobs} job(s), {2 * jobs} rows: {cells}")


def pick() -> None:
    layers = nn.ModuleList([nn.Linear(i, o, bias=False) for (o, i), _ in SHAPES.values()])
    start = time.perf_counter()
    plan = apply_precision([layers], "fp32", "cpu")
    seconds = time.perf_counter() - start
    costs = plan.linear.costs or {}
    print(f"\napply_precision(fp32, auto) picks: {plan.linear.form}, padding {plan.linear.padding} "
          f"(measured ms: " + ", ".join(f"{form} {value * 1e3:.2f}" for form, value in costs.items())
          + f"; setup took {seconds * 1e3:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()} ({cpu_flags()}); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"quantized engine {torch.backends.quantized.engine}")
    with torch.no_grad():
        per_linear(args.repeats)
        whole_step(args.repeats)
        pick()


if __name__ == "__main__":
    main()
