"""Precision modes and the CPU linear form (generation.backends.precision), on the CPU.

The LM tests wrap each attention so that its projections are ``nn.Linear`` modules sharing
the original parameters, as the decoder's wrappers promise (:class:`ProjectedAttention`,
checked against stock audiocraft first), then compare every mode's logits with fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from audiocraft.models import MusicGen, builders
from audiocraft.models.lm import LMModel
from audiocraft.modules.conditioners import ConditioningAttributes
from audiocraft.modules.transformer import StreamingMultiheadAttention
from einops import rearrange
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from generation.backends import precision
from generation.backends.checkpoints import checkpoint_config
from generation.backends.precision import (
    FORMS,
    Bf16Linear,
    FormLinear,
    Int8Linear,
    LinearPlan,
    PrecisionPlan,
    RowPadding,
    apply_precision,
    cheaper_stops,
    choose_padding,
    linear,
    measure_counts,
    measure_forms,
    pack_weight,
    packed_available,
    resolve_mode,
)
from generation.errors import ModelLoadError

D, FF, CARD = 1024, 4096, 2048  # musicgen-small
SMALL_SHAPES = [(3 * D, D), (D, D), (FF, D), (D, FF), (CARD, D)]  # in_proj, out_proj and q/k/v, linear1, linear2, head
TINY_SHAPES = [(96, 32), (32, 32), (128, 32), (32, 128), (CARD, 32)]
LIMIT = 40  # row counts checked
KINDS = ("tiny", "small")  # a tiny checkpoint; one randomly initialised musicgen-small layer with its heads


# -- the decoder's contract, emulated ---------------------------------------------------------


def sharing(weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear whose weight is ``weight``: the packed parameter itself, or a view of it (q/k/v)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach(), requires_grad=False)
    assert layer.weight.data_ptr() == weight.data_ptr()
    return layer


class ProjectedAttention(nn.Module):
    """Full-sequence attention whose projections are nn.Linear children (packed in_proj, or q/k/v slices)."""

    def __init__(self, inner: StreamingMultiheadAttention) -> None:
        super().__init__()
        self.inner, self.heads, self.cross = inner, inner.num_heads, inner.cross_attention
        packed, dim = inner.in_proj_weight, inner.embed_dim
        if self.cross:
            self.q, self.k, self.v = (sharing(packed[i * dim : (i + 1) * dim]) for i in range(3))
        else:
            self.in_proj = sharing(packed)
        self.out_proj = inner.out_proj

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **_: object
    ) -> tuple[torch.Tensor, None]:
        if self.cross:
            q, k, v = self.q(query), self.k(key), self.v(value)
        else:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.heads) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v, is_causal=not self.cross)
        return self.out_proj(rearrange(x, "b h t d -> b t (h d)")), None


def project_attention(lm: LMModel) -> None:
    for layer in lm.transformer.layers:
        layer.self_attn = ProjectedAttention(layer.self_attn)
        if layer.cross_attention is not None:
            layer.cross_attention = ProjectedAttention(layer.cross_attention)


def expected_linears(lm: LMModel) -> int:
    """in_proj, out_proj, linear1, linear2 per layer; q, k, v, out_proj per cross-attention; the heads."""
    layers = lm.transformer.layers
    return 4 * len(layers) + 4 * sum(layer.cross_attention is not None for layer in layers) + len(lm.linears)


def plain_linears(lm: LMModel) -> int:
    return sum(type(module) is nn.Linear for part in (lm.transformer, lm.linears) for module in part.modules())


def logits(lm: LMModel, batch: int = 2, steps: int = 12) -> torch.Tensor:
    codes = torch.randint(0, lm.card, (batch, lm.num_codebooks, steps), generator=torch.Generator().manual_seed(0))
    conditions = [ConditioningAttributes(text={"description": f"prompt {i}"}) for i in range(batch)]
    with torch.no_grad():
        return lm(codes, conditions)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute error over the largest reference magnitude."""
    return float((value - reference).abs().max() / reference.abs().max())


def tiny_lm(directory: Path) -> LMModel:
    return MusicGen.get_pretrained(str(directory), device="cpu").lm


def small_one_layer_lm() -> LMModel:
    """musicgen-small's layer (dim 1024, 16 heads, FF 4096, cross-attention) and heads, randomly initialised."""
    cfg = checkpoint_config("small")
    cfg["transformer_lm"]["num_layers"] = 1
    torch.manual_seed(0)
    return builders.get_lm_model(OmegaConf.create(cfg)).eval()


def fresh_lm(kind: str, tiny_dir: Path, projected: bool = True) -> LMModel:
    """The same weights every call (a tiny checkpoint, or a seeded small layer); projected as the decoder promises."""
    lm = tiny_lm(tiny_dir) if kind == "tiny" else small_one_layer_lm()
    if projected:
        project_attention(lm)
    return lm


@pytest.fixture(scope="module")
def fp32_logits(tiny_model_dir: Path) -> dict[str, torch.Tensor]:
    return {kind: logits(fresh_lm(kind, tiny_model_dir)) for kind in KINDS}


# -- mode resolution ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "device", "mode"),
    [("auto", "cpu", "fp32"), ("auto", "cuda", "fp16"), ("auto", "cuda:1", "fp16"), ("fp32", "cpu", "fp32"),
     ("bf16", "cpu", "bf16"), ("int8", "cpu", "int8"), ("fp16", "cuda", "fp16"), ("fp32", "cuda:0", "fp32")],
)
def test_resolve_mode(requested: str, device: str, mode: str) -> None:
    assert resolve_mode(requested, device) == mode


@pytest.mark.parametrize(
    ("requested", "device", "words"),
    [("int8", "cuda", "int8 does not run on cuda"), ("bf16", "cuda:0", "bf16 does not run on cuda"),
     ("fp16", "cpu", "fp16 does not run on cpu"), ("fp64", "cpu", "Unknown precision 'fp64'"),
     ("auto", "mps", "cpu and cuda only"), ("auto", "gpu", "Unknown device 'gpu'")],
)
def test_resolve_mode_refuses(requested: str, device: str, words: str) -> None:
    with pytest.raises(ModelLoadError, match=words):
        resolve_mode(requested, device)


@pytest.mark.parametrize(
    ("mode", "device", "form", "words"),
    [("bf16", "cpu", "swapped", "swapped linear form is for fp32 on the CPU"),
     ("int8", "cpu", "swapped", "not int8 on cpu"), ("auto", "cuda", "swapped", "not fp16 on cuda"),
     ("int8", "cpu", "packed", "packed linear form is for fp32 on the CPU"),
     ("fp32", "cuda", "packed", "not fp32 on cuda"),
     ("fp32", "cpu", "transposed", "Unknown linear form")],
)
def test_apply_refuses_a_form_the_mode_does_not_have(mode: str, device: str, form: str, words: str) -> None:
    layers = nn.ModuleList([nn.Linear(8, 8)])
    with pytest.raises(ModelLoadError, match=words):
        apply_precision([layers], mode, device, form)
    assert type(layers[0]) is nn.Linear


def test_cuda_fp16_is_audiocrafts_autocast_and_rewrites_nothing() -> None:
    layers = nn.ModuleList([nn.Linear(8, 8)])
    plan = apply_precision([layers], "auto", "cuda")
    assert (plan.mode, plan.autocast, plan.rewritten) == ("fp16", True, 0)
    assert (plan.linear.form, plan.linear.padded_rows(3)) == ("linear", 3)
    assert type(layers[0]) is nn.Linear


def test_applying_twice_is_refused() -> None:
    layers = nn.ModuleList([nn.Linear(8, 8)])
    apply_precision([layers], "fp32", "cpu", "linear")
    with pytest.raises(ValueError, match="already applied"):
        apply_precision([layers], "fp32", "cpu", "linear")


# -- padding ------------------------------------------------------------------------------------


def test_padded_rows() -> None:
    assert [RowPadding(4, 4).padded_rows(rows) for rows in (2, 4, 6, 8, 16)] == [4, 4, 8, 8, 16]
    assert [RowPadding(12, 1).padded_rows(rows) for rows in (2, 11, 12, 14)] == [12, 12, 12, 14]
    assert RowPadding(1, 1).padded_rows(3) == 3


@pytest.mark.parametrize(
    ("padding", "jobs"),
    [(RowPadding(4, 4), [2, 2, 4, 4, 6, 6, 8, 8]), (RowPadding(12, 1), [6, 6, 6, 6, 6, 6, 7, 8]),
     (RowPadding(5, 1), [3, 3, 3, 4, 5, 6, 7, 8]), (RowPadding(1, 1), [1, 2, 3, 4, 5, 6, 7, 8])],
)
def test_padded_jobs_land_on_padded_rows(padding: RowPadding, jobs: list[int]) -> None:
    plan = LinearPlan("linear", padding, "forced")
    assert [plan.padded_jobs(count) for count in range(1, 9)] == jobs
    for count in range(1, 9):
        rows = 2 * plan.padded_jobs(count)
        assert rows >= padding.min_rows and rows % padding.row_multiple == 0


def test_stops_raise_a_step_to_the_next_kept_count_of_its_class() -> None:
    padding = RowPadding(12, 1, stops=(12, 16))
    assert [padding.padded_rows(rows) for rows in (2, 12, 13, 14, 16, 18)] == [12, 12, 16, 16, 16, 18]
    assert RowPadding(4, 4, stops=(8,)).padded_rows(2) == 8
    assert RowPadding(12, 1).counts(16) == [12, 13, 14, 15, 16]
    assert RowPadding(4, 4).counts(14) == [4, 8, 12, 16]


def test_cheaper_stops_skip_counts_that_a_larger_count_clearly_beats() -> None:
    padding = RowPadding(12, 1)
    measured = {12: 1.79, 13: 2.28, 14: 2.35, 15: 2.73, 16: 1.73}  # MKL's swapped form, an AMD EPYC
    assert cheaper_stops(padding, measured) == RowPadding(12, 1, stops=(12, 16))
    rising = {12: 1.0, 13: 1.1, 14: 1.2, 15: 1.3, 16: 1.4}
    assert cheaper_stops(padding, rising) == padding  # nothing to skip: no stops
    noise = {12: 1.0, 13: 1.05, 14: 0.97, 15: 1.0, 16: 0.95}
    assert cheaper_stops(padding, noise) == padding  # within the margin: not worth more rows
    stops = cheaper_stops(padding, measured).stops
    assert all(stop in measured for stop in stops) and stops[-1] == max(measured)  # all in the class


def test_measure_counts_times_each_count() -> None:
    costs = measure_counts([torch.randn(96, 32)], "swapped", [4, 8, 12], repeats=1)
    assert sorted(costs) == [4, 8, 12] and all(seconds > 0 for seconds in costs.values())


def test_choose_padding_adds_the_fewest_rows() -> None:
    # what MKL gives F.linear: stable from 12 rows at any count, or from 4 at multiples of 4
    assert choose_padding({1: 12, 2: 12, 4: 4, 8: 8}) == RowPadding(4, 4)
    assert choose_padding({1: 12, 2: 12, 4: 12, 8: 16}) == RowPadding(12, 1)
    assert choose_padding({1: 1, 2: 2, 4: 4, 8: 8}) == RowPadding(1, 1)
    assert choose_padding({1: 40, 2: 40, 4: 40, 8: 40}) == RowPadding(1, 1, invariant=False)


# -- rewriting a real tiny MusicGen ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fp32", "bf16", "int8"])
def test_every_linear_of_the_lm_is_rewritten(tiny_model_dir: Path, mode: str) -> None:
    lm = tiny_lm(tiny_model_dir)
    project_attention(lm)
    assert plain_linears(lm) == expected_linears(lm) == 20  # 2 layers x (4 + 4 cross) + 4 heads
    plan = apply_precision([lm.transformer, lm.linears], mode, "cpu")
    kind = {"fp32": FormLinear, "bf16": Bf16Linear, "int8": Int8Linear}[mode]
    rewritten = [module for part in (lm.transformer, lm.linears) for module in part.modules()
                 if isinstance(module, kind)]
    assert plain_linears(lm) == 0
    assert plan.rewritten == len(rewritten) == expected_linears(lm)
    assert all(layer.self_attn.out_proj is layer.self_attn.inner.out_proj for layer in lm.transformer.layers)


@pytest.mark.parametrize("form", ["linear", "swapped"])
def test_fp32_keeps_the_parameters(tiny_model_dir: Path, form: str) -> None:
    lm = tiny_lm(tiny_model_dir)
    project_attention(lm)
    before = {name: parameter.data_ptr() for name, parameter in lm.named_parameters()}
    apply_precision([lm.transformer, lm.linears], "fp32", "cpu", form)
    assert {name: parameter.data_ptr() for name, parameter in lm.named_parameters()} == before
    attention = lm.transformer.layers[0].self_attn
    assert attention.in_proj.weight is attention.inner.in_proj_weight


def test_the_packed_form_holds_a_copy_and_drops_the_weights_it_replaced(tiny_model_dir: Path) -> None:
    """Its reordered copy replaces each weight; what another module still holds (stock attention's in_proj) stays."""
    lm = tiny_lm(tiny_model_dir)
    project_attention(lm)
    before = dict(lm.named_parameters())
    apply_precision([lm.transformer, lm.linears], "fp32", "cpu", "packed")
    after = dict(lm.named_parameters())
    layer = lm.transformer.layers[0]
    assert layer.linear1.weight is None and layer.linear1.packed is not None and layer.linear1.packed.is_mkldnn
    dropped = {name.split(".")[-2] for name in set(before) - set(after)}
    # the feed-forwards, out_proj, the heads, and the cross-attention's q/k/v views (their storage stays: below)
    assert dropped == {"linear1", "linear2", "out_proj", "0", "1", "2", "3", "q", "k", "v"}, dropped
    kept = {name for name in before if name.endswith("in_proj_weight")}
    assert kept and kept <= set(after)  # audiocraft's own attention still computes with them
    assert all(after[name] is before[name] for name in after)


def test_int8_reaches_the_packed_in_proj(tiny_model_dir: Path) -> None:
    """Stock attention computes in_proj through F.linear, out of quantisation's reach; under the contract it is not."""
    fresh = tiny_lm(tiny_model_dir)
    parts = (fresh.transformer, fresh.linears)
    total = sum(p.numel() for part in parts for p in part.parameters())
    norms = sum(p.numel() for name, p in fresh.transformer.named_parameters() if "norm" in name)
    in_proj = sum(layer.self_attn.in_proj_weight.numel() + layer.cross_attention.in_proj_weight.numel()
                  for layer in fresh.transformer.layers)
    stock = tiny_lm(tiny_model_dir)
    stock_plan = apply_precision([stock.transformer, stock.linears], "int8", "cpu")
    projected = tiny_lm(tiny_model_dir)
    project_attention(projected)
    plan = apply_precision([projected.transformer, projected.linears], "int8", "cpu")
    assert stock_plan.rewritten == 2 * 4 + 4  # out_proj (self and cross), linear1, linear2 per layer; the heads
    assert stock_plan.quantised_fraction == pytest.approx(1 - (in_proj + norms) / total)
    assert plan.quantised_fraction == pytest.approx(1 - norms / total)
    assert plan.quantised_fraction > 0.99


# -- accuracy -----------------------------------------------------------------------------------

BOUNDS = {"fp32-linear": 0.0, "fp32-swapped": 5e-6, "fp32-packed": 5e-6, "bf16": 2e-2, "int8": 5e-2}
# measured: 0, 5e-7, 1.3e-6, 5e-3, 2.4e-2


def test_the_emulated_contract_is_stock_audiocraft(tiny_model_dir: Path, fp32_logits: dict[str, torch.Tensor]) -> None:
    for kind in KINDS:
        stock = logits(fresh_lm(kind, tiny_model_dir, projected=False))
        torch.testing.assert_close(fp32_logits[kind], stock, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", list(BOUNDS))
def test_logits_stay_close_to_fp32(
    tiny_model_dir: Path, fp32_logits: dict[str, torch.Tensor], kind: str, variant: str
) -> None:
    lm = fresh_lm(kind, tiny_model_dir)
    mode, _, form = variant.partition("-")
    apply_precision([lm.transformer, lm.linears], mode, "cpu", form or "auto")
    error = relative_error(logits(lm), fp32_logits[kind])
    logging.getLogger(__name__).info("%s %s: max relative error of the logits %.2e", kind, variant, error)
    if variant == "fp32-linear":
        assert error == 0  # nn.Linear is F.linear
    else:
        assert 0 < error < BOUNDS[variant], error


# -- forms and the measurement --------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_a_forced_form_is_used(form: str) -> None:
    layers = nn.ModuleList([nn.Linear(32, 96, bias=False), nn.Linear(32, 32, bias=True)])
    x = torch.randn(5, 3, 32)
    expected = [F.linear(x, layer.weight, layer.bias) for layer in layers]
    plan = apply_precision([layers], "fp32", "cpu", form)
    assert (plan.linear.form, plan.linear.chosen_by, plan.linear.costs) == (form, "forced", None)
    assert all(isinstance(layer, FormLinear) and layer.form == form for layer in layers)
    with torch.no_grad():
        for layer, want in zip(layers, expected, strict=True):
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_the_forms_compute_the_same_linear() -> None:
    weight, bias, x = torch.randn(64, 48), torch.randn(64), torch.randn(2, 7, 48)
    torch.testing.assert_close(linear(x, weight, bias, "swapped"), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    packed = linear(x, pack_weight(weight), bias, "packed")
    torch.testing.assert_close(packed, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert packed.shape == (2, 7, 64)
    assert torch.equal(linear(x, weight, bias, "linear"), F.linear(x, weight, bias))


def test_auto_picks_the_cheaper_measured_form(caplog: pytest.LogCaptureFixture) -> None:
    layers = nn.ModuleList([nn.Linear(inputs, outputs, bias=False) for outputs, inputs in SMALL_SHAPES[:4]])
    with caplog.at_level(logging.INFO, logger="generation.backends.precision"):
        plan = apply_precision([layers], "fp32", "cpu")
    costs = plan.linear.costs
    assert plan.linear.chosen_by == "measured" and costs is not None and set(costs) == set(FORMS)
    assert all(seconds > 0 for seconds in costs.values())
    assert plan.linear.form == min(FORMS, key=lambda form: costs[form])
    assert any("took" in record.getMessage() and "measured" in record.getMessage() for record in caplog.records)


def test_measure_forms_prices_each_forms_padded_rows() -> None:
    weight = torch.randn(96, 32)
    padding = {"linear": RowPadding(4, 4), "swapped": RowPadding(12, 1), "packed": RowPadding(1, 1)}
    costs = measure_forms([weight], padding, repeats=1)
    assert set(costs) == set(FORMS) and all(seconds > 0 for seconds in costs.values())


def test_without_onednn_auto_measures_the_two_blas_forms_and_packed_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "packed_available", lambda: False)
    plan = apply_precision([nn.ModuleList([nn.Linear(32, 96, bias=False)])], "fp32", "cpu")
    assert plan.linear.costs is not None and set(plan.linear.costs) == {"linear", "swapped"}
    assert plan.linear.form in ("linear", "swapped")
    layers = nn.ModuleList([nn.Linear(8, 8)])
    with pytest.raises(ModelLoadError, match="oneDNN"):
        apply_precision([layers], "fp32", "cpu", "packed")
    assert type(layers[0]) is nn.Linear


def test_auto_never_picks_a_form_without_a_row_class_over_one_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """A form whose rows change bits at every count would break the batching guarantee, however fast it is."""
    real = precision._measured_padding

    def padding(probe: torch.Tensor, weights: list[torch.Tensor], form: str) -> RowPadding:
        return RowPadding(1, 1, invariant=False) if form == "packed" else real(probe, weights, form)

    monkeypatch.setattr(precision, "_measured_padding", padding)
    costs = {"linear": 3.0, "swapped": 2.0, "packed": 1.0}  # packed the fastest
    monkeypatch.setattr(precision, "measure_forms", lambda weights, paddings: costs)
    plan = apply_precision([nn.ModuleList([nn.Linear(32, 96, bias=False)])], "fp32", "cpu")
    assert plan.linear.form == "swapped" and plan.linear.padding.invariant


def test_this_pytorch_has_the_packed_form() -> None:
    """The pinned torch (2.1, x86-64 wheels) ships oneDNN: auto must be able to measure the packed form here."""
    assert packed_available()


def test_bf16_takes_the_packed_weights_where_they_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    weight, x = torch.randn(64, 48), torch.randn(3, 48)
    expected = F.linear(x.to(torch.bfloat16), weight.to(torch.bfloat16)).float()
    layers = nn.ModuleList([nn.Linear(48, 64, bias=False)])
    layers[0].weight = nn.Parameter(weight)
    plan = apply_precision([layers], "bf16", "cpu")
    assert plan.linear.form == "packed" and layers[0].weight is None and layers[0].packed.is_mkldnn
    with torch.no_grad():
        torch.testing.assert_close(layers[0](x), expected, rtol=2e-2, atol=2e-2)
    monkeypatch.setattr(precision, "packed_available", lambda: False)
    plain = nn.ModuleList([nn.Linear(48, 64, bias=False)])
    plain[0].weight = nn.Parameter(weight)
    plan = apply_precision([plain], "bf16", "cpu")
    assert plan.linear.form == "linear" and plain[0].weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(plain[0](x), expected)


# -- row classes ----------------------------------------------------------------------------------


def planned_layers(shapes: list[tuple[int, int]], variant: str) -> tuple[nn.ModuleList, PrecisionPlan]:
    torch.manual_seed(1)
    layers = nn.ModuleList([nn.Linear(inputs, outputs, bias=False) for outputs, inputs in shapes])
    mode, _, form = variant.partition("-")
    return layers, apply_precision([layers], mode, "cpu", form or "auto")


def row_bits_hold(layer: nn.Module, padding: RowPadding, inputs: int) -> None:
    """One row, at every padded count up to LIMIT, among other rows and in another slot, gives the same bits."""
    generator = torch.Generator().manual_seed(2)
    row = torch.randn(1, inputs, generator=generator)
    counts = sorted({padding.padded_rows(rows) for rows in range(1, LIMIT + 1)})
    assert counts[0] == padding.padded_rows(1) >= padding.min_rows and len(counts) >= 3, counts
    reference = None
    with torch.no_grad():
        for count in counts:
            batch = torch.randn(count, inputs, generator=generator)
            slot = (count * 7 + 3) % count
            batch[slot] = row[0]
            out = layer(batch)[slot]
            reference = out if reference is None else reference
            assert torch.equal(out, reference), f"{count} rows, slot {slot}"


def unpadded_counts_differ(layer: nn.Module, padding: RowPadding, inputs: int) -> list[int]:
    """Counts the padding never uses at which some row's bits are not those it has at LIMIT rows."""
    x = torch.randn(LIMIT, inputs, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = layer(x)
        return [rows for rows in range(1, LIMIT) if padding.padded_rows(rows) != rows
                and not torch.equal(layer(x[:rows]), full[:rows])]


@pytest.mark.parametrize("variant", ["fp32", "fp32-linear", "fp32-swapped", "fp32-packed", "bf16", "int8"])
@pytest.mark.parametrize(
    ("shapes", "threads"),
    [(SMALL_SHAPES, None), (TINY_SHAPES, None), (TINY_SHAPES, 1)],
    ids=["small", "tiny", "tiny-1thread"],
)
def test_row_bits_do_not_depend_on_the_padded_row_count(
    variant: str, shapes: list[tuple[int, int]], threads: int | None
) -> None:
    """At the padded counts a row keeps its bits (at the thread count of the plan: it may differ by threads)."""
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        row_classes_hold(variant, shapes)
    finally:
        torch.set_num_threads(default)


def row_classes_hold(variant: str, shapes: list[tuple[int, int]]) -> None:
    layers, plan = planned_layers(shapes, variant)
    padding = plan.linear.padding
    assert padding.invariant
    differing = {}
    for layer, (_, inputs) in zip(layers, shapes, strict=True):
        row_bits_hold(layer, padding, inputs)
        differing[inputs, layer.out_features] = unpadded_counts_differ(layer, padding, inputs)
    if (padding.min_rows, padding.row_multiple) != (1, 1):  # the padding is not for show: some count it avoids
        # does change bits (stops alone only skip counts that measured slower)
        assert any(differing.values()), differing
    logging.getLogger(__name__).info("%s %s: counts that change bits: %s", variant, padding, differing)


def test_stock_dynamic_quantisation_ties_a_row_to_its_neighbours() -> None:
    """Why Int8Linear scales rows: with one activation scale per call, a larger neighbour changes a row's result."""
    torch.manual_seed(4)
    weight = torch.randn(64, 32)
    plain = nn.Linear(32, 64, bias=False)
    plain.weight = nn.Parameter(weight)
    stock = torch.ao.quantization.quantize_dynamic(nn.Sequential(plain), {nn.Linear}, dtype=torch.qint8)
    ours = Int8Linear(weight, None)
    rows = torch.randn(4, 32)
    louder = rows.clone()
    louder[3] *= 10
    with torch.no_grad():
        assert not torch.equal(stock(rows)[0], stock(louder)[0])
        assert torch.equal(ours(rows)[0], ours(louder)[0])
