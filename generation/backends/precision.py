"""Precision modes and the CPU matmul form of the decode loop's linear layers.

The contract with the decoder: once it has installed its attention wrappers, every linear
layer a decode step uses is an ``nn.Linear`` child module under ``lm.transformer`` (the
self-attention's packed in_proj, the cross-attention's q/k/v slices, ``out_proj``,
``linear1``/``linear2``, all sharing the original parameters) or in ``lm.linears`` (the
output heads), and the decoder calls them as modules (``self.in_proj(x)``), never through
``F.linear`` on their weights. Then, on the thread and at the thread count that will decode::

    plan = apply_precision([lm.transformer, lm.linears], settings.precision, device, settings.linear)

replaces each such ``nn.Linear`` child in place (fp32 keeps the very same parameters) and
returns a :class:`PrecisionPlan`. The decoder then pads every decode step of ``jobs`` jobs to
``plan.linear.padded_jobs(jobs)`` jobs with filler jobs (``padded_rows`` in rows), and keeps
``model.autocast`` on when ``plan.autocast``.

Modes (:func:`resolve_mode` turns ``auto`` and the device into one, and refuses the pairs
that make no sense with a :class:`~generation.errors.ModelLoadError`):

* ``fp32`` (CPU): each linear runs in one of three forms, ``linear`` (``F.linear(x, W)``),
  ``swapped`` (``(W @ xᵀ)ᵀ``) or ``packed`` (oneDNN's matmul on a weight reordered once at
  load into its blocked layout, PyTorch's ``mkldnn._linear_pointwise``, the kernel PyTorch's own
  compiler uses for CPU linears), chosen by :func:`measure_forms` at load unless forced.
  Which is fastest depends on the CPU and its BLAS (the swapped form is ~3x faster than
  ``F.linear`` with few rows on an AMD EPYC without AMX, 0.7x on an Intel Xeon with AMX), so
  it is measured on the model's largest feed-forward weight and its packed in_proj, at the
  row counts the decoder will really use: 1 job and 8 jobs (2 rows per job with
  classifier-free guidance), each padded as the form needs. The packed form holds its own
  reordered copy of each weight: the replaced layer's weight is dropped, so memory grows only
  by the weights another module still holds (the attention in_proj weights that audiocraft's
  stock attention uses: about 3/8 of the transformer's). It exists where PyTorch has its
  oneDNN CPU kernels (:func:`packed_available`).
* ``bf16`` (CPU): weights stored in bf16 (reordered for oneDNN, as the packed form, where
  PyTorch has it); each linear casts its input to bf16 and its output back to fp32. Norms,
  attention and softmax stay fp32 (torch 2.1's CPU bf16 attention is very slow at decode
  shapes). Without AVX-512 BF16 / AMX it is slower than fp32.
* ``int8`` (CPU): dynamic quantisation of every linear (qint8 weights with one scale per
  output row, fbgemm kernels). Stock dynamic quantisation takes one activation scale for
  the whole call, so a row's result would depend on its batch mates; :class:`Int8Linear`
  scales each row to a unit range and appends two fixed rows (+1 and -1) so that the
  activation scale never changes, which also makes each row's quantisation finer.
  ``PrecisionPlan.quantised_fraction`` says how much of the modules' weights is int8.
* ``fp16`` (CUDA): what audiocraft does on CUDA: weights loaded in fp16 and
  ``model.autocast`` (float16) on, so ``plan.autocast`` is True. Nothing is rewritten.
* ``fp32`` on CUDA: the given modules are cast to fp32 and autocast is off (audiocraft
  loads fp16 weights on CUDA, so pass every module of the LM's forward pass, e.g. ``[lm]``).

Row classes. A BLAS gives a row different low bits depending on how many rows share the
call, and for some counts on its slot too. Measured with MKL (torch 2.1, AMD EPYC, 2
threads): ``F.linear`` works in blocks of 4 rows, and below 12 rows the rows of a
last, incomplete block get other bits; so a row's bits are the same at any count >= 12, or
at any multiple of 4. The swapped form needs >= 12 (its 4-11 rows are not one class: at 5-7
rows every row differs). With 1 thread ``F.linear`` is stable from 4 rows on. bf16, the
row-scaled int8 and (on that EPYC, at 1 and 2 threads) the packed form give the same bits at
every count, so they need no padding: a lone job's step has 2 rows, not 16. Since this depends on the BLAS, the
CPU and the thread count, :func:`probe_row_classes` measures it at load for the computation
the plan uses, and :func:`choose_padding` picks the cheapest padding that lands on stable
counts (:class:`RowPadding`: at least ``min_rows``, a multiple of ``row_multiple``). A count's
cost is not monotone in rows, so the fp32 forms also time their class's counts up to 8 jobs'
rows (:func:`measure_counts`, a few ms) and a step skips to a larger count of the class where
that one is clearly cheaper (:func:`cheaper_stops`). With
it, a job's bits do not depend on how many jobs share its step, as long as the thread count
stays ``plan.threads``. On CUDA nothing is padded and nothing is promised.

:func:`linear` computes one linear in a given form, for code that holds raw weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache, partial
from typing import Literal, cast

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.ao.quantization import per_channel_dynamic_qconfig
from torch.nn import functional as F

from generation.errors import ModelLoadError

log = logging.getLogger(__name__)

Mode = Literal["fp32", "bf16", "int8", "fp16"]
Form = Literal["linear", "swapped", "packed"]
MODES: tuple[Mode, ...] = ("fp32", "bf16", "int8", "fp16")
FORMS: tuple[Form, ...] = ("linear", "swapped", "packed")
CPU_MODES: tuple[Mode, ...] = ("fp32", "bf16", "int8")
CUDA_MODES: tuple[Mode, ...] = ("fp32", "fp16")
PROBE_COUNTS = (*range(1, 25), 32, 40)  # the row counts at which probe_row_classes compares a row's bits
ROW_MULTIPLES = (1, 2, 4, 8)  # paddings to a multiple of these are probed
MEASURED_JOBS = (1, 8)  # the decode steps measure_forms prices: 1 job and 8 jobs
ROWS_PER_JOB = 2  # classifier-free guidance: a conditioned row and a null row
STOP_MARGIN = 0.1  # a step is raised to a larger count of its class only if that is this much cheaper


@dataclass(frozen=True)
class RowPadding:
    """The row counts a decode step is padded to: at least ``min_rows``, a multiple of ``row_multiple``.

    At those counts a row's bits depend neither on the count nor on its slot
    (``invariant``; False when the probe found no such counts, and then nothing is padded).
    """

    min_rows: int
    row_multiple: int
    invariant: bool = True
    stops: tuple[int, ...] = ()  # sorted counts of the class a step is raised to, where measured cheaper

    def padded_rows(self, rows: int) -> int:
        least = max(self.min_rows, -(-rows // self.row_multiple) * self.row_multiple)
        return next((stop for stop in self.stops if stop >= least), least)

    def counts(self, most_rows: int) -> list[int]:
        """The counts of the class from ``min_rows`` up to the padded count of ``most_rows``."""
        top = max(self.min_rows, -(-most_rows // self.row_multiple) * self.row_multiple)
        return list(range(self.min_rows, top + 1, self.row_multiple))


@dataclass(frozen=True)
class LinearPlan:
    """How the linears compute, and how a decode step's rows are padded for them."""

    form: Form  # fp32 on the CPU: F.linear(x, W), (W @ x.T).T or oneDNN packed; bf16: packed where it exists,
    # else linear; int8 and CUDA: their own kernels ("linear")
    padding: RowPadding
    chosen_by: Literal["measured", "forced", "fixed"]  # fixed: the mode has a single form
    costs: dict[str, float] | None = None  # measured seconds per form (a 1-job and an 8-job step), if measured

    @property
    def min_rows(self) -> int:
        return self.padding.min_rows

    def padded_rows(self, rows: int) -> int:
        """The rows a decode step of ``rows`` real rows must have (filler rows make up the difference)."""
        return self.padding.padded_rows(rows)

    def padded_jobs(self, jobs: int, rows_per_job: int = ROWS_PER_JOB) -> int:
        """The jobs (real and filler) a step of ``jobs`` jobs must have, each ``rows_per_job`` rows."""
        return -(-self.padded_rows(jobs * rows_per_job) // rows_per_job)


@dataclass(frozen=True)
class PrecisionPlan:
    """What :func:`apply_precision` did, and what the decoder must do for it."""

    mode: Mode
    device: str
    linear: LinearPlan
    autocast: bool  # the decoder keeps the model's autocast (fp16) on around the LM's forward passes
    rewritten: int  # nn.Linear modules replaced
    quantised_fraction: float  # of the modules' parameter elements, stored in int8 (0 unless int8)
    threads: int  # torch's intra-op threads when the row classes were probed: decode with as many
    setup_seconds: float  # time spent measuring and converting


# -- mode resolution ----------------------------------------------------------------------------


def _device_type(device: str) -> str:
    try:
        return torch.device(device).type
    except RuntimeError as exc:
        raise ModelLoadError(f"Unknown device '{device}': use cpu or cuda.") from exc


def resolve_mode(requested: str, device: str) -> Mode:
    """``auto`` is fp32 on the CPU and fp16 on CUDA; a mode the device cannot run is refused."""
    kind = _device_type(device)
    if kind not in ("cpu", "cuda"):
        raise ModelLoadError(f"Precision modes exist for cpu and cuda only, not '{device}'.")
    if requested == "auto":
        return "fp32" if kind == "cpu" else "fp16"
    if requested not in MODES:
        raise ModelLoadError(f"Unknown precision '{requested}': use auto, {', '.join(MODES)}.")
    mode = cast(Mode, requested)
    allowed = CPU_MODES if kind == "cpu" else CUDA_MODES
    if mode not in allowed:
        raise ModelLoadError(
            f"Precision {mode} does not run on {kind}: use one of {', '.join(allowed)} there (or auto)."
        )
    return mode


# -- the fp32 forms ------------------------------------------------------------------------------

PACK_ROWS_HINT = ROWS_PER_JOB * max(MEASURED_JOBS)  # oneDNN's batch-size hint for the reordered layout


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (fp32 or bf16) reordered for the ``packed`` form: an opaque oneDNN tensor (a copy)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS_HINT)


@cache
def packed_available() -> bool:
    """Whether this PyTorch has the oneDNN CPU kernels of the ``packed`` form (and they compute a linear)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.no_grad():
            out = linear(torch.ones(2, 8), pack_weight(torch.ones(4, 8)), torch.ones(4), "packed")
    except (RuntimeError, AttributeError) as exc:
        log.info("the packed linear form is not available here: %r", exc)
        return False
    return torch.equal(out, torch.full((2, 4), 9.0))


def available_forms() -> tuple[Form, ...]:
    return FORMS if packed_available() else ("linear", "swapped")


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, form: Form = "linear"
) -> torch.Tensor:
    """``x @ weight.T + bias`` as ``F.linear``; on the CPU also as ``(weight @ x.T).T`` (``swapped``) or with a
    weight from :func:`pack_weight` (``packed``)."""
    if form == "linear" or (form == "swapped" and x.device.type != "cpu"):
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    flat = x.reshape(rows, x.shape[-1])
    if form == "packed":
        out = torch.ops.mkldnn._linear_pointwise(flat.contiguous(), weight, bias, "none", [], "")
    else:
        out = torch.mm(weight, flat.t()).t()
        if bias is not None:
            out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class FormLinear(nn.Module):
    """An fp32 linear computed in a fixed form. ``linear`` and ``swapped`` hold the replaced layer's own
    parameters; ``packed`` holds a reordered copy of the weight instead (and the layer's bias)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, form: Form) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight: nn.Parameter | None = None if form == "packed" else weight
        self.packed: torch.Tensor | None = pack_weight(weight) if form == "packed" else None
        self.bias = bias
        self.form: Form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        matrix = self.packed if self.packed is not None else self.weight
        assert matrix is not None
        return linear(x, matrix, self.bias, self.form)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, form={self.form}"


# -- bf16 ---------------------------------------------------------------------------------------


class Bf16Linear(nn.Module):
    """Weights in bf16; the input is cast to bf16 and the output back to fp32 (bias added in fp32).

    ``form``: ``linear`` (``F.linear`` in bf16) or ``packed`` (the bf16 weight reordered once for oneDNN, as the
    fp32 packed form; about 1.7x faster per call on an AVX-512 BF16 EPYC, and the same bits at every row count).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, form: Form = "linear") -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.form: Form = form
        bf16 = weight.detach().to(torch.bfloat16)
        self.weight = None if form == "packed" else nn.Parameter(bf16, requires_grad=False)
        self.packed = pack_weight(bf16) if form == "packed" else None
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        matrix = self.packed if self.packed is not None else self.weight
        assert matrix is not None
        out = linear(x.to(torch.bfloat16), matrix, None, self.form).to(x.dtype)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16, form={self.form}"


# -- int8 ---------------------------------------------------------------------------------------


_TINY = torch.finfo(torch.float32).tiny


def _quantise(weight: torch.Tensor) -> quantized_dynamic.Linear:
    """A dynamic qint8 linear (one scale per output row, no bias) for ``weight``."""
    plain = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    plain.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
    plain.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    return quantized_dynamic.Linear.from_float(plain)


class Int8Linear(nn.Module):
    """A dynamically quantised linear whose rows do not depend on each other.

    fbgemm quantises the whole input with one scale taken from its min and max, so stock
    dynamic quantisation gives a row different results next to a larger row. Here each
    row is divided by its largest magnitude, two fixed rows (+1 and -1 in the first
    column) pin the input's range to [-1, 1], and the output rows are scaled back.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.quantised = _quantise(weight)
        # fbgemm's op, called as the module calls it (same bits) without the module's Python around it: a decode
        # step makes ~150 of these calls, and each Python-level op costs about as much as a small matmul
        self._op = partial(torch.ops.quantized.linear_dynamic, W_prepack=self.quantised._packed_params._packed_params,
                           reduce_range=True)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        pins = torch.zeros(2, self.in_features)
        pins[0, 0], pins[1, 0] = 1.0, -1.0
        self.register_buffer("pins", pins, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32:
            flat = flat.float()
        scale = torch.linalg.vector_norm(flat, float("inf"), dim=1, keepdim=True).clamp_min_(_TINY)  # max |row|
        out = self._op(torch.cat([flat / scale, self.pins]))[:-2].mul_(scale)
        if self.bias is not None:
            out = out + self.bias
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qint8 per-row"


# -- measuring ----------------------------------------------------------------------------------


def probe_row_classes(
    compute: Callable[[torch.Tensor], torch.Tensor], in_features: int, counts: Sequence[int] = PROBE_COUNTS
) -> dict[int, int]:
    """For each multiple ``q`` in :data:`ROW_MULTIPLES`: the smallest count (a multiple of ``q``) from
    which every row's output bits stay the same at each probed multiple of ``q``."""
    limit = max(counts)
    x = torch.randn(limit, in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = compute(x)
        stable = {rows: rows == limit or torch.equal(compute(x[:rows]), full[:rows]) for rows in counts}
    classes = {}
    for multiple in ROW_MULTIPLES:
        probed = sorted((rows for rows in counts if rows % multiple == 0), reverse=True)
        unstable = next((rows for rows in probed if not stable[rows]), 0)
        classes[multiple] = unstable + multiple
    return classes


def choose_padding(classes: dict[int, int], limit: int = max(PROBE_COUNTS)) -> RowPadding:
    """The padding that adds the fewest rows over steps of 1 to 8 jobs, among the probed classes.

    A class must hold over at least the upper half of the probed counts to count; with none,
    nothing is padded and the plan says rows are not invariant.
    """
    candidates = [RowPadding(rows, multiple) for multiple, rows in classes.items() if rows <= limit // 2]
    if not candidates:
        return RowPadding(1, 1, invariant=False)
    steps = [ROWS_PER_JOB * jobs for jobs in range(1, max(MEASURED_JOBS) + 1)]
    return min(candidates, key=lambda pad: (sum(pad.padded_rows(rows) for rows in steps), pad.row_multiple))


def row_padding(compute: Callable[[torch.Tensor], torch.Tensor], in_features: int) -> RowPadding:
    return choose_padding(probe_row_classes(compute, in_features))


def cheaper_stops(padding: RowPadding, costs: dict[int, float], margin: float = STOP_MARGIN) -> RowPadding:
    """``padding`` with stops: a count that some larger count of its class beats by ``margin`` is skipped,
    and a step is raised to the next count kept (a BLAS's cost is not monotone in rows: measured with
    MKL on an AMD EPYC, the swapped fp32 linear costs about 1.4x more at 14 rows than at 16).

    ``costs`` holds seconds per count for the class's counts, as :func:`measure_counts` gives.
    Every stop is a count of the class, so a row's bits stay the same.
    """
    counts = sorted(costs)
    stops = [count for index, count in enumerate(counts)
             if all(costs[count] * (1 - margin) <= costs[larger] for larger in counts[index + 1:])]
    if stops == counts:  # no count is worth skipping
        return padding
    return replace(padding, stops=tuple(stops))


def _best_time(call: Callable[[], object], best: float) -> float:
    start = time.perf_counter()
    call()
    return min(best, time.perf_counter() - start)


def measure_counts(
    weights: Sequence[torch.Tensor], form: Form, counts: Sequence[int], repeats: int = 3
) -> dict[int, float]:
    """Seconds per row count for one linear of each weight in ``form``, summed (the fastest of
    ``repeats``, counts interleaved, so load on the machine weighs on each alike)."""
    cases = []
    for weight in weights:
        x = torch.randn(max(counts), weight.shape[1])
        matrix = _form_weight(weight, form)
        cases += [(rows, partial(linear, x[:rows].contiguous(), matrix, None, form)) for rows in counts]
    costs = dict.fromkeys(counts, 0.0)
    for (rows, _), seconds in zip(cases, _fastest([call for _, call in cases], repeats), strict=True):
        costs[rows] += seconds
    return costs


def _fastest(calls: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """The fastest of ``repeats`` timings of each call, calls interleaved (after a round that warms caches up)."""
    best = [float("inf")] * len(calls)
    with torch.no_grad():
        for _ in range(repeats + 1):
            for index, call in enumerate(calls):
                best[index] = _best_time(call, best[index])
    return best


def measure_forms(
    weights: Sequence[torch.Tensor],
    padding: dict[Form, RowPadding],
    jobs: Sequence[int] = MEASURED_JOBS,
    repeats: int = 3,
) -> dict[Form, float]:
    """Seconds per form of ``padding`` for one linear of each weight at each decode step size (``jobs``), summed.

    A step of ``j`` jobs has ``2 * j`` rows, padded as the form needs. Calls of all forms
    are interleaved and the fastest of ``repeats`` is kept, so load on the machine weighs
    on each alike.
    """
    cases: list[tuple[Form, Callable[[], object]]] = []
    for weight in weights:
        counts = {form: [padding[form].padded_rows(ROWS_PER_JOB * j) for j in jobs] for form in padding}
        x = torch.randn(max(max(rows) for rows in counts.values()), weight.shape[1])
        matrices = {form: _form_weight(weight, form) for form in padding}  # packed once per weight, not per count
        cases += [(form, partial(linear, x[:rows].contiguous(), matrices[form], None, form))
                  for form in padding for rows in counts[form]]
    costs: dict[Form, float] = dict.fromkeys(padding, 0.0)
    for (form, _), seconds in zip(cases, _fastest([call for _, call in cases], repeats), strict=True):
        costs[form] += seconds
    return costs


# -- rewriting ----------------------------------------------------------------------------------


def _linears(modules: Sequence[nn.Module]) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """Every (parent, name, child) with ``type(child) is nn.Linear`` under ``modules``."""
    for top in modules:
        if type(top) is nn.Linear:
            raise ValueError("apply_precision rewrites nn.Linear children: pass their parent module")
        for parent in list(top.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    yield parent, name, child


def _representative_weights(layers: Sequence[nn.Linear]) -> list[torch.Tensor]:
    """The largest weight (a feed-forward) and a packed in_proj ([3D, D]) if there is one."""
    largest = max(layers, key=lambda layer: layer.weight.numel()).weight
    packed = [layer.weight for layer in layers if layer.weight.shape[0] == 3 * layer.weight.shape[1]]
    return [largest.detach(), packed[0].detach()] if packed else [largest.detach()]


def _probe_weight(layers: Sequence[nn.Linear]) -> torch.Tensor:
    """The smallest weight: the row-class probe makes a call on it per probed count."""
    return min(layers, key=lambda layer: layer.weight.numel()).weight.detach()


def _storage_elements(tensors: Iterator[torch.Tensor]) -> int:
    """Elements of the distinct storages behind ``tensors`` (views of one storage count once)."""
    sizes: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes() // tensor.element_size()
    return sum(sizes.values())


def _replacement(mode: Mode, layer: nn.Linear, form: Form) -> nn.Module:
    if mode == "bf16":
        return Bf16Linear(layer.weight, layer.bias, form)
    if mode == "int8":
        return Int8Linear(layer.weight, layer.bias)
    return FormLinear(cast(nn.Parameter, layer.weight), cast(nn.Parameter | None, layer.bias), form)


def _rewrite(found: list[tuple[nn.Module, str, nn.Linear]], mode: Mode, form: Form) -> int:
    """Replace each found linear (a layer shared by several parents is converted once)."""
    replaced: dict[int, nn.Module] = {}
    for parent, name, child in found:
        if id(child) not in replaced:
            replaced[id(child)] = _replacement(mode, child, form)
        setattr(parent, name, replaced[id(child)])
    return len(replaced)


def _form_weight(weight: torch.Tensor, form: Form) -> torch.Tensor:
    """The weight as ``form`` takes it."""
    return pack_weight(weight) if form == "packed" else weight


def _in_form(weight: torch.Tensor, form: Form) -> Callable[[torch.Tensor], torch.Tensor]:
    return partial(linear, weight=_form_weight(weight, form), bias=None, form=form)


def _cpu_linear_plan(mode: Mode, layers: list[nn.Linear], requested: str) -> LinearPlan:
    probe = _probe_weight(layers)
    if mode == "bf16":
        form: Form = "packed" if packed_available() else "linear"  # oneDNN's reordered weights where there are
        return LinearPlan(form, row_padding(Bf16Linear(probe, None, form), probe.shape[1]), "fixed")
    if mode == "int8":
        return LinearPlan("linear", row_padding(Int8Linear(probe, None), probe.shape[1]), "fixed")
    if requested in FORMS:
        form = cast(Form, requested)
        return LinearPlan(form, _measured_padding(probe, _representative_weights(layers), form), "forced")
    weights = _representative_weights(layers)
    padding = {form: _measured_padding(probe, weights, form) for form in available_forms()}
    costs = measure_forms(weights, padding)
    keeping = [form for form in costs if padding[form].invariant] or list(costs)  # forms with a row class first
    chosen = min(keeping, key=lambda form: costs[form])  # a tie keeps the first: F.linear
    return LinearPlan(chosen, padding[chosen], "measured", {name: round(value, 6) for name, value in costs.items()})


def _measured_padding(probe: torch.Tensor, weights: Sequence[torch.Tensor], form: Form) -> RowPadding:
    """The form's row class, with stops where a larger count of it measured cheaper (up to 8 jobs' rows)."""
    padding = row_padding(_in_form(probe, form), probe.shape[1])
    if not padding.invariant:
        return padding
    counts = padding.counts(ROWS_PER_JOB * max(MEASURED_JOBS))
    return cheaper_stops(padding, measure_counts(weights, form, counts)) if len(counts) > 1 else padding


def _check_form_request(mode: Mode, kind: str, requested: str) -> None:
    if requested not in ("auto", *FORMS):
        raise ModelLoadError(f"Unknown linear form '{requested}': use auto, linear, swapped or packed.")
    if requested in ("swapped", "packed") and not (mode == "fp32" and kind == "cpu"):
        raise ModelLoadError(f"The {requested} linear form is for fp32 on the CPU, not {mode} on {kind}: use auto.")
    if requested == "packed" and not packed_available():
        raise ModelLoadError("The packed linear form needs PyTorch's oneDNN (mkldnn) CPU kernels, which this "
                             "PyTorch lacks: use auto.")


def apply_precision(modules: Sequence[nn.Module], mode: str, device: str, linear: str = "auto") -> PrecisionPlan:
    """Put every ``nn.Linear`` under ``modules`` in precision ``mode`` (``auto`` allowed) on ``device``.

    ``linear`` forces the fp32 CPU form (``linear``, ``swapped`` or ``packed``); ``auto`` measures each.
    Raises :class:`ModelLoadError` for a mode or form the device cannot run.
    """
    start = time.perf_counter()
    resolved = resolve_mode(mode, device)
    kind = _device_type(device)
    _check_form_request(resolved, kind, linear)
    if kind == "cuda":
        return _apply_cuda(modules, resolved, device, start)
    found = list(_linears(modules))
    layers = list({id(child): child for _, _, child in found}.values())
    if not layers:
        raise ValueError("no nn.Linear under the given modules (is precision already applied?)")
    total = _storage_elements(p for module in modules for p in module.parameters())
    plan = _cpu_linear_plan(resolved, layers, linear)
    quantised = _storage_elements(layer.weight for layer in layers) if resolved == "int8" else 0
    rewritten = _rewrite(found, resolved, plan.form)
    return _finish(resolved, device, plan, False, rewritten, quantised / max(total, 1), start)


def _apply_cuda(modules: Sequence[nn.Module], mode: Mode, device: str, start: float) -> PrecisionPlan:
    """fp16: audiocraft's own (fp16 weights, autocast on); fp32: the modules cast to fp32, autocast off."""
    if mode == "fp32":
        for module in modules:
            module.float()
    plan = LinearPlan("linear", RowPadding(1, 1, invariant=False), "fixed")
    return _finish(mode, device, plan, mode == "fp16", 0, 0.0, start)


def _finish(
    mode: Mode, device: str, linear_plan: LinearPlan, autocast: bool, rewritten: int, fraction: float, start: float
) -> PrecisionPlan:
    threads = torch.get_num_threads()
    plan = PrecisionPlan(mode, device, linear_plan, autocast, rewritten, fraction, threads, time.perf_counter() - start)
    log.info(
        "precision %s on %s: %d linears rewritten, form %s (%s, costs %s), padding %s at %d threads, "
        "int8 fraction %.3f, autocast %s; took %.1f ms",
        mode, device, rewritten, linear_plan.form, linear_plan.chosen_by, linear_plan.costs, linear_plan.padding,
        threads, fraction, autocast, plan.setup_seconds * 1000,
    )
    return plan
