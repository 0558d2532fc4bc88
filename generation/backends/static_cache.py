"""Fixed-shape attention state for the CUDA fast path (:mod:`generation.backends.static_step`).

A CUDA graph replays kernels on fixed addresses and shapes, so nothing here grows or
moves while jobs come and go:

* **Slots.** A job holds one slot ``s`` (rows ``2s`` cond and ``2s + 1`` null) of
  ``max_jobs``; it takes the lowest free one and frees it when it leaves.
* **Buckets.** A step runs the rows of the smallest bucket (in jobs) that holds every
  occupied slot; each bucket has its own graph.
* **Caches.** Per self-attention layer one key and one value tensor
  ``[2 * max_jobs, heads, capacity, head_dim]``. A step writes each row's new key/value
  at the row's own position (one scatter over a positions tensor) and attends over the
  whole capacity with the mask ``key_index <= position[row]``.
* **Text.** Per cross-attention layer the slots' text keys/values
  ``[2 * max_jobs, heads, text_capacity, head_dim]``, and per row a mask of the job's
  real text length (pad positions are masked out).

Rows of free slots are *idle*: position 0, whatever token, text mask admitting key 0
only, so they compute finite values that no job ever reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from generation.backends.attention import JobAttentionState

DEFAULT_BUCKETS = (1, 2, 4, 8, 16)


def buckets_for(max_jobs: int, min_rows: int = 1, candidates: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The buckets a decoder of ``max_jobs`` uses: the candidates below it, and ``max_jobs`` itself.

    Buckets of fewer than ``min_rows`` rows are left out (as the per-job path pads every
    step to ``min_rows`` rows: one row class), unless that would leave none but ``max_jobs``.
    """
    kept = {bucket for bucket in candidates if bucket < max_jobs and 2 * bucket >= min_rows}
    return tuple(sorted(kept | {max_jobs}))


def bucket_for(jobs: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``jobs`` jobs."""
    fitting = [bucket for bucket in buckets if bucket >= jobs]
    if not fitting:
        raise ValueError(f"{jobs} jobs do not fit in any bucket of {tuple(buckets)}")
    return min(fitting)


class SlotTable:
    """Which job (by identity) holds which slot; a job takes the lowest free slot."""

    def __init__(self, size: int) -> None:
        self._owners: list[object | None] = [None] * size

    def slot_of(self, owner: object) -> int | None:
        return next((slot for slot, held in enumerate(self._owners) if held is owner), None)

    def take(self, owner: object) -> int:
        slot = self._owners.index(None) if None in self._owners else None
        if slot is None:
            raise RuntimeError(f"all {len(self._owners)} slots are taken")
        self._owners[slot] = owner
        return slot

    def free(self, slot: int) -> None:
        self._owners[slot] = None

    def held(self) -> list[tuple[int, object]]:
        return [(slot, owner) for slot, owner in enumerate(self._owners) if owner is not None]

    @property
    def span(self) -> int:
        """Slots up to and including the highest taken one (what a bucket must hold)."""
        return max((slot + 1 for slot, _ in self.held()), default=0)


@dataclass(frozen=True)
class Geometry:
    """The shapes of one model's attention state."""

    max_jobs: int
    self_layers: int
    cross_layers: int
    heads: int
    head_dim: int
    codebooks: int


def _zeros_like_grown(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """A zero tensor like ``tensor`` with ``size`` along ``dim``, holding ``tensor``'s contents at the start."""
    shape = list(tensor.shape)
    shape[dim] = size
    grown = tensor.new_zeros(shape)
    grown.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
    return grown


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class StaticCache:
    """The static buffers of every layer, and the step's inputs (tokens and positions per row)."""

    def __init__(
        self, geometry: Geometry, capacity: int, text_capacity: int, *, dtype: torch.dtype,
        text_dtype: torch.dtype, device: torch.device | str,
    ) -> None:
        rows = 2 * geometry.max_jobs
        self.geometry = geometry
        kv_shape = (rows, geometry.heads, capacity, geometry.head_dim)
        text_shape = (rows, geometry.heads, text_capacity, geometry.head_dim)
        selfs, crosses = range(geometry.self_layers), range(geometry.cross_layers)
        self.keys = [torch.zeros(kv_shape, dtype=dtype, device=device) for _ in selfs]
        self.values = [torch.zeros(kv_shape, dtype=dtype, device=device) for _ in selfs]
        self.text_keys = [torch.zeros(text_shape, dtype=text_dtype, device=device) for _ in crosses]
        self.text_values = [torch.zeros(text_shape, dtype=text_dtype, device=device) for _ in crosses]
        self.text_mask = torch.zeros(rows, text_capacity, dtype=torch.bool, device=device)
        self.text_mask[:, 0] = True  # every row starts idle
        self.key_index = torch.arange(capacity, device=device)
        self.tokens = torch.zeros(rows, geometry.codebooks, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)

    @property
    def capacity(self) -> int:
        return int(self.key_index.shape[0])

    @property
    def text_capacity(self) -> int:
        return int(self.text_mask.shape[1])

    # -- inside a step (fixed shapes: capturable) ------------------------------------------------
    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Rows ``0..R-1``'s new keys/values [R, h, 1, d], each at the row's own position."""
        rows = keys.shape[0]
        index = self.positions[:rows].view(rows, 1, 1, 1).expand_as(keys)
        self.keys[layer][:rows].scatter_(2, index, keys.to(self.keys[layer].dtype))
        self.values[layer][:rows].scatter_(2, index, values.to(self.values[layer].dtype))

    def self_mask(self, rows: int) -> torch.Tensor:
        """[R, 1, 1, capacity]: row r attends to positions up to its own."""
        return (self.key_index.view(1, -1) <= self.positions[:rows].view(-1, 1)).view(rows, 1, 1, -1)

    def text_mask_for(self, rows: int) -> torch.Tensor:
        """[R, 1, 1, text_capacity]: row r attends to its job's real text."""
        return self.text_mask[:rows].view(rows, 1, 1, -1)

    # -- between steps -----------------------------------------------------------------------------
    def grow(self, capacity: int, text_capacity: int) -> bool:
        """Make room for a job of ``capacity`` positions and ``text_capacity`` text tokens, keeping
        every slot's contents. Returns whether the buffers moved (captured graphs are then stale)."""
        moved = False
        if capacity > self.capacity:
            size = round_up(capacity, 64)
            self.keys = [_zeros_like_grown(tensor, 2, size) for tensor in self.keys]
            self.values = [_zeros_like_grown(tensor, 2, size) for tensor in self.values]
            self.key_index = torch.arange(size, device=self.key_index.device)
            moved = True
        if text_capacity > self.text_capacity:
            size = 1 << (text_capacity - 1).bit_length()
            self.text_keys = [_zeros_like_grown(tensor, 2, size) for tensor in self.text_keys]
            self.text_values = [_zeros_like_grown(tensor, 2, size) for tensor in self.text_values]
            self.text_mask = _zeros_like_grown(self.text_mask, 1, size)
            moved = True
        return moved

    def load(self, slot: int, state: JobAttentionState) -> None:
        """Copy a prefilled job's caches (its first ``state.position`` positions) and text into ``slot``."""
        rows = slice(2 * slot, 2 * slot + 2)
        filled = state.position
        for layer, (keys, values) in enumerate(state.caches):
            self.keys[layer][rows, :, :filled].copy_(keys[:, :, :filled])
            self.values[layer][rows, :, :filled].copy_(values[:, :, :filled])
        length = state.text[0][0].shape[2] if state.text else 1
        for layer, (keys, values) in enumerate(state.text):
            self.text_keys[layer][rows, :, :length].copy_(keys)
            self.text_values[layer][rows, :, :length].copy_(values)
        self.text_mask[rows] = torch.arange(self.text_capacity, device=self.text_mask.device) < length

    def idle(self, slot: int) -> None:
        """A freed slot's rows attend to key 0 of their text only (finite, never read)."""
        self.text_mask[2 * slot : 2 * slot + 2] = False
        self.text_mask[2 * slot : 2 * slot + 2, 0] = True


def needs(state: JobAttentionState) -> tuple[int, int]:
    """The (capacity, text length) a job's state needs in a :class:`StaticCache`."""
    capacity = state.caches[0][0].shape[2] if state.caches else 0
    text = state.text[0][0].shape[2] if state.text else 1
    return int(capacity), int(text)
