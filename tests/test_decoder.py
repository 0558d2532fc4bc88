"""The batch decoder on a real (tiny) MusicGen loaded through ``MusicGen.get_pretrained``.

The promise under test: a job's music depends on its prompt, seed, params and model,
never on which jobs share its batch or which row it sits in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generation.backends.base import GenerationTask
from generation.backends.musicgen import MusicGenBackend
from generation.jobs import SamplingParams
from tests.helpers import RecordingListener, tiny_backend

SHORT = GenerationTask("short", "calm piano", 1.0, 7, SamplingParams())
LONG = GenerationTask(
    "long", "a very long prompt about heavy metal guitars and pounding drums at night", 2.0, 11, SamplingParams()
)
NUCLEUS = GenerationTask("nucleus", "jazz trio", 1.5, 5, SamplingParams(temperature=0.8, top_p=0.9, cfg_coef=5.0))
GREEDY = GenerationTask("greedy", "ambient pads", 1.2, 3, SamplingParams(temperature=0.0))
ALL = (SHORT, LONG, NUCLEUS, GREEDY)


def run(backend: MusicGenBackend, tasks: list[GenerationTask], **listener_args: dict[str, int]) -> RecordingListener:
    listener = RecordingListener(**listener_args)
    backend.generate(tasks, listener)
    return listener


@pytest.fixture(scope="module", params=["linear", "swapped", "packed"], ids=["F.linear", "swapped", "packed"])
def backend(request: pytest.FixtureRequest, tiny_words_model_dir: Path) -> MusicGenBackend:
    loaded = tiny_backend(tiny_words_model_dir, linear=request.param)
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def alone(backend: MusicGenBackend) -> dict[str, np.ndarray]:
    return {task.job_id: run(backend, [task]).results[task.job_id] for task in ALL}


def test_loads_through_get_pretrained(backend: MusicGenBackend, tiny_words_model_dir: Path) -> None:
    model = backend._require()
    assert model.name == str(tiny_words_model_dir.resolve())
    assert backend.sample_rate == 32000
    assert backend.max_duration == 30


def test_prompts_really_have_different_token_lengths(backend: MusicGenBackend) -> None:
    conditioner = backend._require().lm.condition_provider.conditioners["description"]
    _, mask = conditioner.tokenize([SHORT.prompt, LONG.prompt])
    lengths = mask.sum(dim=1).tolist()
    assert lengths[0] < lengths[1], lengths


def test_stock_audiocraft_batching_changes_a_job(backend: MusicGenBackend) -> None:
    """The problem we solve is real: stock generate gives a batched prompt different music."""
    model = backend._require()
    model.set_generation_params(duration=1.0, use_sampling=False)
    alone_stock = model.generate([SHORT.prompt])
    batched_stock = model.generate([SHORT.prompt, LONG.prompt])
    assert not torch.equal(alone_stock[0], batched_stock[0])


def test_matches_stock_audiocraft_for_a_lone_prompt(backend: MusicGenBackend, alone: dict[str, np.ndarray]) -> None:
    model = backend._require()
    model.set_generation_params(duration=SHORT.duration, top_k=250, temperature=1.0, cfg_coef=3.0)
    torch.manual_seed(SHORT.seed)
    stock = model.generate([SHORT.prompt])[0].numpy()
    np.testing.assert_array_equal(stock, alone[SHORT.job_id])


@pytest.mark.parametrize(
    "order",
    [[SHORT, LONG], [LONG, SHORT], [NUCLEUS, LONG, SHORT, GREEDY], [GREEDY, SHORT, NUCLEUS]],
    ids=lambda tasks: "+".join(t.job_id for t in tasks),
)
def test_batched_equals_alone_at_any_row(
    backend: MusicGenBackend, alone: dict[str, np.ndarray], order: list[GenerationTask]
) -> None:
    listener = run(backend, order)
    assert set(listener.results) == {task.job_id for task in order}
    for task in order:
        np.testing.assert_array_equal(listener.results[task.job_id], alone[task.job_id], err_msg=task.job_id)


def test_each_job_gets_its_own_duration(alone: dict[str, np.ndarray]) -> None:
    for task in ALL:
        assert alone[task.job_id].shape == (1, int(task.duration * 32000))


def test_seed_decides(backend: MusicGenBackend, alone: dict[str, np.ndarray]) -> None:
    again = run(backend, [SHORT]).results[SHORT.job_id]
    other = GenerationTask("other", SHORT.prompt, SHORT.duration, SHORT.seed + 1, SHORT.sampling)
    np.testing.assert_array_equal(again, alone[SHORT.job_id])
    assert not np.array_equal(run(backend, [other]).results["other"], again)


def test_progress_counts_each_jobs_steps(backend: MusicGenBackend) -> None:
    listener = run(backend, [SHORT, LONG])
    for task in (SHORT, LONG):
        log = listener.progress_log[task.job_id]
        total = int(task.duration * 50) + 3  # frames + the delay pattern's 3 extra columns
        assert log[-1] == (total, total)
        assert [done for done, _ in log] == list(range(total + 1))


def test_cancelled_job_leaves_the_batch(backend: MusicGenBackend, alone: dict[str, np.ndarray]) -> None:
    listener = run(backend, [LONG, SHORT, NUCLEUS], cancel_after={"long": 5})
    assert "long" not in listener.results
    assert len(listener.progress_log["long"]) == 5  # the up-front report, then 4 steps
    for task in (SHORT, NUCLEUS):
        np.testing.assert_array_equal(listener.results[task.job_id], alone[task.job_id])


def test_a_prompt_the_conditioner_rejects_fails_alone(backend: MusicGenBackend, alone: dict[str, np.ndarray]) -> None:
    conditioner = backend._require().lm.condition_provider.conditioners["description"]
    original = conditioner.tokenize

    def tokenize(texts: list[str | None]) -> object:
        if any(text and "poison" in text for text in texts):
            raise ValueError("cannot tokenize this")
        return original(texts)

    conditioner.tokenize = tokenize
    try:
        poison = GenerationTask("poison", "poison pill", 1.0, 1, SamplingParams())
        listener = run(backend, [poison, SHORT])
    finally:
        del conditioner.tokenize
    assert isinstance(listener.errors["poison"], ValueError)
    np.testing.assert_array_equal(listener.results[SHORT.job_id], alone[SHORT.job_id])


def test_decode_steps_take_the_fused_attention_kernel(backend: MusicGenBackend) -> None:
    """Every per-job attention call of a text-only job goes to PyTorch's fused CPU kernel. Its inputs need a contiguous
    last dimension; the swapped linear form returns a transposed view, which sent every call to the math path (up to
    2.6x slower per step at musicgen-small's shapes, ``benchmarks/attention_cost.py``) until the split copied it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run(backend, [SHORT, GREEDY])
    calls = {event.key: event.count for event in profiler.key_averages()}
    assert calls.get("aten::_scaled_dot_product_flash_attention", 0) > 0, calls
    assert calls.get("aten::_scaled_dot_product_attention_math", 0) == 0
