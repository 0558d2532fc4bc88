"""The static decode step (the CUDA fast path), run eagerly on the CPU against the per-job path.

What a CPU cannot show: CUDA graph capture and replay, fp16 under CUDA autocast, the
speed-up, and that a job's codes are the same in every bucket on a GPU's kernels.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.backends.attention import JobAttentionState
from generation.backends.base import GenerationTask
from generation.backends.musicgen import MusicGenBackend
from generation.backends.static_cache import Geometry, SlotTable, StaticCache, bucket_for, buckets_for
from generation.backends.static_decoding import StaticDecoding, for_decoder
from generation.backends.static_step import unsupported
from generation.backends.streams import Stream
from generation.jobs import SamplingParams
from generation.settings import EngineSettings
from generation.worker import Engine
from tests.helpers import RecordingListener, tiny_backend
from tests.test_continuation import tone_clip
from tests.test_continuous import ScriptedJoin

MAX_JOBS = 4
GEOMETRY = Geometry(max_jobs=3, self_layers=2, cross_layers=1, heads=2, head_dim=4, codebooks=4)


def task(job_id: str, prompt: str, duration: float, seed: int, **sampling: float) -> GenerationTask:
    return GenerationTask(job_id, prompt, duration, seed, SamplingParams(**sampling))  # type: ignore[arg-type]


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


# -- the step through the decode loop -----------------------------------------------------------------
@dataclass
class Recorded:
    """Every logits the loop sampled from, per (job, step), and the jobs' audio."""

    logits: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    seats: list[dict[str, int | None]] = field(default_factory=list)  # at each step, each job's slot
    buckets: list[int] = field(default_factory=list)
    results: dict[str, np.ndarray] = field(default_factory=dict)


def record(backend: MusicGenBackend, monkeypatch: pytest.MonkeyPatch) -> Recorded:
    decoder = backend._require_decoder()
    recorded = Recorded()
    sample = decoder._sample

    def recording_sample(stream: Stream, logits: torch.Tensor) -> None:
        recorded.logits[(stream.job_id, stream.step)] = logits.clone()
        sample(stream, logits)

    monkeypatch.setattr(decoder, "_sample", recording_sample)
    static = decoder.static
    if static is not None:
        step = static.step

        def recording_step(ready: list[Stream]) -> list[torch.Tensor]:
            logits = step(ready)
            recorded.seats.append({stream.job_id: static.slot_of(stream) for stream in ready})
            recorded.buckets.append(static.bucket)
            return logits

        monkeypatch.setattr(static, "step", recording_step)
    return recorded


def static_backend(
    model_dir: Path, buckets: tuple[int, ...] | None = None, max_jobs: int = MAX_JOBS, **options: object
) -> MusicGenBackend:
    """A backend whose decoder runs the static step eagerly (the CPU stand-in for graph replay)."""
    backend = tiny_backend(model_dir, max_jobs=max_jobs, **options)
    backend.load()
    decoder = backend._require_decoder()
    model = backend._require()
    decoder.static = StaticDecoding(
        model, decoder.attention, max_jobs=max_jobs, graphs=False, min_rows=decoder.plan.linear.min_rows,
        buckets=buckets,
    )
    return backend


def generate(
    backend: MusicGenBackend, tasks: list[GenerationTask], join: ScriptedJoin | None, monkeypatch: pytest.MonkeyPatch
) -> Recorded:
    recorded = record(backend, monkeypatch)
    listener = RecordingListener()
    backend.generate(tasks, listener, join)
    assert not listener.errors, listener.errors
    recorded.results = listener.results
    return recorded


LONG_PROMPT = (  # 20 tokens: no stopwords, no punctuation
    "heavy metal guitars night pounding drums screaming lead choir ghosts singing slow doom riffs distorted bass "
    "thunder rain organ bells"
)


def scenario(clip: Path) -> tuple[list[GenerationTask], ScriptedJoin]:
    """Texts of 1 to 8 words, a continuation (prefilled in 4 chunks), joins, leaving at different lengths.

    a (slot 0) and b (slot 1) start; c joins at step 4 and, prefilled, takes slot 2 at step 8;
    a leaves after 13 steps, so d, joining at step 16, takes slot 0 (and its 20-token text grows
    the text buffers beside b's and c's); c leaves at step 26, b at 28 and d at 29, when e
    joins an empty loop and takes slot 0 again.
    """
    first = [task("a", "calm piano", 0.2, 1, temperature=0.0), task("b", "strings", 0.5, 2, temperature=0.0)]
    extend = GenerationTask("c", "lofi beat", 0.3, 3, SamplingParams(temperature=0.0), continue_from=str(clip))
    script = {
        4: [extend],
        16: [task("d", LONG_PROMPT, 0.2, 4, temperature=0.0)],
        29: [task("e", "jazz trio", 0.2, 5, temperature=0.8, top_p=0.9)],
    }
    return first, ScriptedJoin(script)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tone_clip(tmp_path_factory.mktemp("clip") / "clip.opus", seconds=1.0)


@pytest.fixture(scope="module")
def per_job_backend(tiny_words_model_dir: Path) -> MusicGenBackend:
    backend = tiny_backend(tiny_words_model_dir, max_jobs=MAX_JOBS, linear="linear", prefill_chunk=16)
    backend.load()
    return backend


@pytest.fixture(scope="module")
def eager_backend(tiny_words_model_dir: Path) -> MusicGenBackend:
    return static_backend(tiny_words_model_dir, linear="linear", prefill_chunk=16)


@pytest.fixture
def both(
    per_job_backend: MusicGenBackend, eager_backend: MusicGenBackend, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Recorded, Recorded]:
    first, join = scenario(clip)
    per_job = generate(per_job_backend, first, join, monkeypatch)
    first, join = scenario(clip)
    return per_job, generate(eager_backend, first, join, monkeypatch)


def test_static_logits_match_the_per_job_path(both: tuple[Recorded, Recorded], eager_backend: MusicGenBackend) -> None:
    per_job, static = both
    cache = eager_backend._require_decoder().static.cache  # type: ignore[union-attr]
    assert (cache.capacity, cache.text_capacity) == (1536, 32)  # 30 s of a 50 Hz model; grown for d's text
    assert static.logits.keys() == per_job.logits.keys()
    assert {job for job, _ in static.logits} == set("abcde")
    for key, logits in per_job.logits.items():
        torch.testing.assert_close(static.logits[key], logits, rtol=1e-4, atol=1e-5, msg=f"{key}")


def test_static_greedy_codes_equal_the_per_job_paths(both: tuple[Recorded, Recorded]) -> None:
    per_job, static = both
    assert static.results.keys() == set("abcde")
    for job in "abcd":  # greedy: the same codes, so the same audio
        np.testing.assert_array_equal(static.results[job], per_job.results[job], err_msg=job)


def test_jobs_joining_and_leaving_reuse_slots(both: tuple[Recorded, Recorded]) -> None:
    _, static = both
    slots: dict[str, set[int | None]] = {}
    for seats in static.seats:
        for job, slot in seats.items():
            slots.setdefault(job, set()).add(slot)
    assert slots == {"a": {0}, "b": {1}, "c": {2}, "d": {0}, "e": {0}}  # d and e: slot 0, freed by a, then d
    spans = [max(slot for slot in seats.values() if slot is not None) + 1 for seats in static.seats]
    assert static.buckets == [bucket_for(span, (2, 4)) for span in spans]  # min_rows=4: no bucket of 1 job
    changes = [pair for pair in itertools.pairwise(static.buckets) if pair[0] != pair[1]]
    assert changes == [(2, 4), (4, 2)]  # up when c sits in slot 2, down when it leaves


def test_a_jobs_codes_are_the_same_in_every_bucket_on_the_cpu(
    tiny_words_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From 4 rows on every linear is in one row class here; a GPU's kernels are another matter (untested)."""
    job = task("x", "ambient pads with a slow swell", 0.4, 9)
    audio = []
    for bucket in (2, 8):  # 4 rows, 16 rows
        backend = static_backend(tiny_words_model_dir, buckets=(bucket,), max_jobs=bucket)
        recorded = generate(backend, [job], None, monkeypatch)
        assert set(recorded.buckets) == {bucket}
        audio.append(recorded.results["x"])
    np.testing.assert_array_equal(audio[0], audio[1])


def test_melody_prefix_is_copied_into_the_slot(
    tiny_melody_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A melody model prepends its conditions (no cross-attention): the prefill lands in the slot."""
    from tests.test_decoder_variants import RATE

    melody = tone_clip(tmp_path / "tune.opus", seconds=1.0)
    job = GenerationTask("m", "piano", 0.3, 4, SamplingParams(temperature=0.0), melody_from=str(melody))
    per_job = tiny_backend(tiny_melody_model_dir, max_jobs=MAX_JOBS, prefill_chunk=16)
    expected = generate(per_job, [job], None, monkeypatch)
    static = generate(static_backend(tiny_melody_model_dir, prefill_chunk=16), [job], None, monkeypatch)
    assert static.results["m"].shape == (1, int(0.3 * RATE))
    np.testing.assert_array_equal(static.results["m"], expected.results["m"])
    for key, logits in expected.logits.items():
        torch.testing.assert_close(static.logits[key], logits, rtol=1e-4, atol=1e-5, msg=f"{key}")


# -- when the fast path is used ----------------------------------------------------------------------
def test_cuda_graphs_on_a_cpu_model_keep_the_per_job_path(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = tiny_backend(tiny_model_dir, cuda_graphs=True)
    with caplog.at_level(logging.WARNING):
        backend.load()
    decoder = backend._require_decoder()
    assert decoder.static is None
    assert "model is on cpu: decoding on the per-job path" in caplog.text
    with pytest.raises(ValueError, match="need the model on CUDA"):
        StaticDecoding(backend._require(), decoder.attention, max_jobs=2, graphs=True)
    assert for_decoder(backend._require(), decoder.attention, enabled=False, max_jobs=2, min_rows=1) is None


def test_a_layer_that_normalises_last_is_refused(tiny_model_dir: Path) -> None:
    backend = tiny_backend(tiny_model_dir)
    backend.load()
    lm = backend._require().lm
    assert unsupported(lm) is None
    lm.transformer.layers[1].norm_first = False
    assert unsupported(lm) == "layers that normalise after attention (norm_first: false)"


def test_the_engine_passes_the_setting_to_the_backend() -> None:
    for enabled in (True, False):
        backend = Engine(EngineSettings(cuda_graphs=enabled))._musicgen("facebook/musicgen-small")
        assert isinstance(backend, MusicGenBackend)
        assert backend._decoder_options["cuda_graphs"] is enabled
