"""The CUDA fast path of the decode loop (``JAMGEN_CUDA_GRAPHS``): decode steps through the static step.

:class:`StaticDecoding` is what :class:`~generation.backends.decoder.BatchDecoder` calls
instead of its per-job forward pass: given the jobs that step, it seats each new one in a
slot (copying the caches and text its prefill left into the slot), frees the slots of jobs
that left, picks the bucket, loads the rows' tokens and positions, and runs the static step
(a CUDA graph replay, or eagerly). Sampling stays with the decoder, per job.

Prefill (melody prefixes, continuation prompts) stays on the per-job path; once a job is
seated its per-job caches are dropped, the slot holds them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from generation.backends.attention import Installed
from generation.backends.static_cache import (
    Geometry,
    SlotTable,
    StaticCache,
    bucket_for,
    buckets_for,
    needs,
    round_up,
)
from generation.backends.static_step import CudaGraphs, StaticStep, unsupported
from generation.backends.streams import Stream

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)

TEXT_CAPACITY = 16  # text tokens per row at first; grows (to a power of two) for a longer text


def compute_dtype(model: MusicGen) -> torch.dtype:
    """What the step's attention runs in: autocast's dtype when the model runs under it, else the weights'."""
    autocast = model.autocast.autocast
    if autocast is not None and autocast.fast_dtype is not None:
        return autocast.fast_dtype
    return next(iter(model.lm.parameters())).dtype


def model_capacity(model: MusicGen) -> int:
    """Positions of the longest job without a prefix (``max_duration`` seconds of frames and the delays),
    rounded up to a multiple of 64."""
    frames = int(model.max_duration * model.frame_rate)
    return round_up(len(model.lm.pattern_provider.get_pattern(frames).layout), 64)


def geometry(model: MusicGen, attention: Installed, max_jobs: int) -> Geometry:
    first = attention.self_attention[0]
    return Geometry(
        max_jobs=max_jobs, self_layers=len(attention.self_attention), cross_layers=len(attention.cross_attention),
        heads=first.heads, head_dim=first.inner.embed_dim // first.heads, codebooks=model.lm.num_codebooks,
    )


class StaticDecoding:
    """Decode steps of up to ``max_jobs`` jobs through :class:`StaticStep`; ``graphs`` replays CUDA graphs."""

    def __init__(
        self, model: MusicGen, attention: Installed, *, max_jobs: int, graphs: bool, min_rows: int = 1,
        buckets: Sequence[int] | None = None,
    ) -> None:
        device = next(iter(model.lm.parameters())).device
        if graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on CUDA, not {device.type}")
        problem = unsupported(model.lm)
        if problem is not None:
            raise ValueError(f"the static decode step does not support {problem}")
        self.buckets = tuple(buckets) if buckets is not None else buckets_for(max_jobs, min_rows)
        bucket_for(max_jobs, self.buckets)  # every seat must fit some bucket
        dtype = compute_dtype(model)
        as_float32 = any(layer.inner.attention_as_float32 for layer in attention.cross_attention)
        self.cache = StaticCache(
            geometry(model, attention, max_jobs), model_capacity(model), TEXT_CAPACITY, dtype=dtype,
            text_dtype=torch.float32 if as_float32 else dtype, device=device,
        )
        self.slots = SlotTable(max_jobs)
        self.forward = StaticStep(model.lm, self.cache)
        autocast_dtype = dtype if model.autocast.autocast is not None else None
        self.graphs = CudaGraphs(self.forward, autocast_dtype=autocast_dtype) if graphs else None
        self.bucket = 0  # the bucket of the last step

    def step(self, ready: Sequence[Stream]) -> list[torch.Tensor]:
        """One decode step of ``ready``: each job's logits [2, K, 1, card], in order (views, valid until the
        next step). Every job seated before and not in ``ready`` has left: its slot is freed."""
        slots = self._seat(ready)
        self.bucket = bucket_for(self.slots.span, self.buckets)
        rows = 2 * self.bucket
        self._load_inputs(ready, slots, rows)
        logits = self.graphs(rows) if self.graphs is not None else self.forward(rows)
        return [logits[2 * slot : 2 * slot + 2] for slot in slots]

    def slot_of(self, stream: Stream) -> int | None:
        return self.slots.slot_of(stream)

    def release(self, stream: Stream) -> None:
        """Free ``stream``'s slot now (its window slides: it is seated again, with its new caches, once ready)."""
        slot = self.slots.slot_of(stream)
        if slot is not None:
            self.slots.free(slot)
            self.cache.idle(slot)

    def _seat(self, ready: Sequence[Stream]) -> list[int]:
        present = {id(stream) for stream in ready}
        for slot, owner in self.slots.held():
            if id(owner) not in present:
                self.slots.free(slot)
                self.cache.idle(slot)
        return [self._slot(stream) for stream in ready]

    def _slot(self, stream: Stream) -> int:
        slot = self.slots.slot_of(stream)
        if slot is not None:
            return slot
        slot = self.slots.take(stream)
        if self.cache.grow(*needs(stream.attention)):
            cache = self.cache
            log.info("static cache grown to %d positions, %d text tokens", cache.capacity, cache.text_capacity)
            if self.graphs is not None:
                self.graphs.reset()
        self.cache.load(slot, stream.attention)
        stream.attention.caches.clear()  # the slot holds them now
        stream.attention.text.clear()
        return slot

    def _load_inputs(self, ready: Sequence[Stream], slots: list[int], rows: int) -> None:
        """Each seated row's input token column and position; idle rows at position 0."""
        positions = [0] * rows
        indices: list[int] = []
        for stream, slot in zip(ready, slots, strict=True):
            positions[2 * slot] = positions[2 * slot + 1] = stream.attention.position
            indices += [2 * slot, 2 * slot + 1]
        cache = self.cache
        cache.positions[:rows].copy_(torch.tensor(positions))
        columns = torch.cat([stream.input_column().reshape(1, -1) for stream in ready]).repeat_interleave(2, dim=0)
        cache.tokens.index_copy_(0, torch.tensor(indices, device=cache.tokens.device), columns)


def for_decoder(
    model: MusicGen, attention: Installed, *, enabled: bool, max_jobs: int, min_rows: int
) -> StaticDecoding | None:
    """The fast path a decoder uses when ``enabled`` (``JAMGEN_CUDA_GRAPHS``), or None: the per-job path."""
    if not enabled:
        return None
    device = next(iter(model.lm.parameters())).device
    if device.type != "cuda":
        log.warning("CUDA graphs are on but the model is on %s: decoding on the per-job path", device.type)
        return None
    problem = unsupported(model.lm)
    if problem is not None:
        log.warning("CUDA graphs are on but the static step does not support %s: per-job path", problem)
        return None
    log.info("decode steps run as CUDA graphs (buckets of up to %d jobs)", max_jobs)
    return StaticDecoding(model, attention, max_jobs=max_jobs, graphs=True, min_rows=min_rows)
