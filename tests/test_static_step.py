"""The static decode step's buffers (the CUDA fast path): buckets, slots, the static cache."""

from __future__ import annotations

import pytest
import torch

from generation.backends.attention import JobAttentionState
from generation.backends.static_cache import Geometry, SlotTable, StaticCache, bucket_for, buckets_for

GEOMETRY = Geometry(max_jobs=3, self_layers=2, cross_layers=1, heads=2, head_dim=4, codebooks=4)


def small_cache(capacity: int = 10, text_capacity: int = 6) -> StaticCache:
    cache = StaticCache(GEOMETRY, capacity, text_capacity, dtype=torch.float32, text_dtype=torch.float32, device="cpu")
    for tensor in [*cache.keys, *cache.values, *cache.text_keys, *cache.text_values]:
        tensor.normal_()
    return cache


# -- buckets and slots --------------------------------------------------------------------------------
def test_bucket_for_picks_the_smallest_bucket_that_holds_the_jobs() -> None:
    assert [bucket_for(jobs, (1, 2, 4, 8)) for jobs in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="9 jobs"):
        bucket_for(9, (1, 2, 4, 8))


def test_buckets_stop_at_max_jobs_and_keep_the_row_class() -> None:
    assert buckets_for(8) == (1, 2, 4, 8)
    assert buckets_for(6) == (1, 2, 4, 6)
    assert buckets_for(32) == (1, 2, 4, 8, 16, 32)
    assert buckets_for(8, min_rows=4) == (2, 4, 8)  # 2 rows would be another row class
    assert buckets_for(3, min_rows=12) == (3,)


def test_a_job_takes_the_lowest_free_slot_and_frees_it() -> None:
    table = SlotTable(3)
    a, b, c, d = object(), object(), object(), object()
    assert [table.take(a), table.take(b), table.take(c)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="all 3 slots"):
        table.take(d)
    table.free(1)
    assert table.span == 3 and table.slot_of(b) is None
    assert table.take(d) == 1 and table.slot_of(d) == 1
    table.free(2)
    assert table.span == 2
    table.free(0)
    table.free(1)
    assert table.span == 0 and table.held() == []


# -- the static cache ----------------------------------------------------------------------------------
def test_a_rows_key_and_value_land_at_its_own_position_only() -> None:
    cache = small_cache()
    before = [tensor.clone() for tensor in [*cache.keys, *cache.values]]
    cache.positions[:4] = torch.tensor([7, 7, 2, 2])
    keys, values = torch.randn(4, 2, 1, 4), torch.randn(4, 2, 1, 4)
    cache.write(1, keys, values)
    for row, position in enumerate([7, 7, 2, 2]):
        assert torch.equal(cache.keys[1][row, :, position], keys[row, :, 0])
        assert torch.equal(cache.values[1][row, :, position], values[row, :, 0])
    changed = torch.zeros(6, 10, dtype=torch.bool)
    changed[[0, 1, 2, 3], [7, 7, 2, 2]] = True
    for old, new in zip(before, [*cache.keys, *cache.values], strict=True):
        same = (old == new).all(dim=-1).all(dim=1)  # [rows, positions]
        if new is cache.keys[1] or new is cache.values[1]:
            assert torch.equal(~same, changed)
        else:
            assert same.all()  # other layers untouched, rows 4-5 (slot 2) untouched


def test_the_mask_admits_exactly_the_positions_up_to_the_rows_own() -> None:
    cache = small_cache()
    cache.positions[:6] = torch.tensor([0, 0, 3, 3, 9, 9])
    mask = cache.self_mask(6)
    assert mask.shape == (6, 1, 1, 10)
    for row, position in enumerate([0, 0, 3, 3, 9, 9]):
        assert mask[row, 0, 0].tolist() == [key <= position for key in range(10)]


def job_state(filled: int, text: int, capacity: int = 8) -> JobAttentionState:
    caches = [(torch.randn(2, 2, capacity, 4), torch.randn(2, 2, capacity, 4)) for _ in range(2)]
    return JobAttentionState(caches, [(torch.randn(2, 2, text, 4), torch.randn(2, 2, text, 4))], position=filled)


def test_a_prefilled_job_is_copied_into_its_slot_and_nowhere_else() -> None:
    cache = small_cache()
    before = [tensor.clone() for tensor in [*cache.keys, *cache.values, *cache.text_keys, *cache.text_values]]
    state = job_state(filled=5, text=3)
    cache.load(1, state)
    for layer, (keys, values) in enumerate(state.caches):
        assert torch.equal(cache.keys[layer][2:4, :, :5], keys[:, :, :5])
        assert torch.equal(cache.values[layer][2:4, :, :5], values[:, :, :5])
        assert torch.equal(cache.keys[layer][2:4, :, 5:], before[layer][2:4, :, 5:])  # past the prefill: as was
    assert torch.equal(cache.text_keys[0][2:4, :, :3], state.text[0][0])
    assert torch.equal(cache.text_values[0][2:4, :, :3], state.text[0][1])
    assert cache.text_mask[2:4].tolist() == [[True] * 3 + [False] * 3] * 2
    assert cache.text_mask[[0, 1, 4, 5]].tolist() == [[True] + [False] * 5] * 4  # idle rows: key 0 only
    for old, new in zip(before, [*cache.keys, *cache.values, *cache.text_keys, *cache.text_values], strict=True):
        assert torch.equal(old[[0, 1, 4, 5]], new[[0, 1, 4, 5]])
    cache.idle(1)
    assert cache.text_mask[2:4].tolist() == [[True] + [False] * 5] * 2


def test_growing_keeps_every_slot_and_says_when_buffers_moved() -> None:
    cache = small_cache()
    keys, text_keys = cache.keys[0].clone(), cache.text_keys[0].clone()
    assert not cache.grow(10, 6)
    assert cache.grow(70, 6)
    assert (cache.capacity, cache.text_capacity) == (128, 6)  # positions in multiples of 64
    assert torch.equal(cache.keys[0][:, :, :10], keys) and not cache.keys[0][:, :, 10:].any()
    assert cache.grow(10, 9)
    assert cache.text_capacity == 16  # text in powers of two
    assert torch.equal(cache.text_keys[0][:, :, :6], text_keys)
    assert cache.text_mask[:, 0].all() and not cache.text_mask[:, 1:].any()
