"""Tracks longer than the model's window: they slide as audiocraft's ``MusicGen.generate`` does, in the running batch.

The 75 s test runs on the tiny model's real 30 s window (one torch thread: about 10 s a side).
The others use a tiny model whose window is 2 s with a 1.2 s stride: audiocraft's 30 s and
18 s scaled by 1/15, so a 5 s track is the 75 s track's four windows in miniature.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.backends.base import GenerationTask
from generation.backends.checkpoints import write_random_checkpoint
from generation.backends.continuation import plan as continuation_plan
from generation.backends.continuation import read_clip
from generation.backends.musicgen import MusicGenBackend
from generation.backends.streams import Stream
from generation.jobs import SamplingParams
from generation.windows import Window, charge, plan
from tests.helpers import RecordingListener, tiny_backend
from tests.test_continuation import stock_params, tone_clip
from tests.test_continuous import ScriptedJoin

RATE = 32000
SMALL_WINDOW, SMALL_STRIDE = 2.0, 1.2  # 30 s and 18 s, scaled by 1/15
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads on two shared cores make the tiny model's steps ~30x slower; the codes are the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_window_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-musicgen-2s")
    return write_random_checkpoint(directory, overrides={"dataset": {"segment_duration": SMALL_WINDOW}}, seed=5)


def load_small(directory: Path, **options: object) -> MusicGenBackend:
    """``MusicGen.__init__`` sets audiocraft's default stride (18 s), which a 2 s window refuses: ours while loading."""
    from audiocraft.models.musicgen import MusicGen

    backend = tiny_backend(directory, extend_stride=SMALL_STRIDE, prefill_chunk=8, linear="linear", **options)
    defaults = MusicGen.set_generation_params.__defaults__
    assert defaults is not None and defaults[-1] == 18
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MusicGen.set_generation_params, "__defaults__", (*defaults[:-1], SMALL_STRIDE))
        backend.load()
    return backend


@pytest.fixture(scope="module")
def small(small_window_dir: Path) -> MusicGenBackend:
    return load_small(small_window_dir)


def keep_codes(backend: MusicGenBackend, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Each finished job's codes, as the decoder hands them to EnCodec."""
    decoder = backend._require_decoder()
    finish = decoder._finish
    codes: dict[str, torch.Tensor] = {}

    def keeping(stream: Stream, *args: object, **kwargs: object) -> None:
        codes[stream.job_id] = stream.codes().clone()
        finish(stream, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decoder, "_finish", keeping)
    return codes


def stock_tokens(
    backend: MusicGenBackend, task: GenerationTask, stride: float
) -> tuple[torch.Tensor, np.ndarray]:
    """audiocraft's ``MusicGen.generate`` for ``task``: its tokens and audio."""
    model = backend._require()
    before = (model.duration, model.extend_stride, dict(model.generation_params), model._progress_callback)
    model.set_generation_params(duration=task.duration, extend_stride=stride, **stock_params(task.sampling))
    model.set_custom_progress_callback(lambda done, total: None)
    torch.manual_seed(task.seed)
    try:
        audio, tokens = model.generate([task.prompt], return_tokens=True)
    finally:  # the model may be shared with other tests: as it was
        model.duration, model.extend_stride, model.generation_params, model._progress_callback = before
    return tokens, audio[0].numpy()


def run(backend: MusicGenBackend, tasks: list[GenerationTask], join: ScriptedJoin | None = None) -> RecordingListener:
    listener = RecordingListener()
    backend.generate(tasks, listener, join)
    assert not listener.errors, listener.errors
    return listener


# -- the plan ----------------------------------------------------------------------------------------
def test_a_75_s_track_is_four_windows_18_s_apart() -> None:
    assert plan(3750, 1500, 900) == (
        Window(0, 1500, 0), Window(900, 1500, 600), Window(1800, 1500, 600), Window(2700, 1050, 600),
    )


def test_a_track_within_the_window_is_one_pass() -> None:
    assert plan(1500, 1500, 900) == (Window(0, 1500, 0),)
    assert plan(400, 1500, 900, prompt=100) == (Window(0, 400, 100),)


def test_a_prompted_track_slides_from_its_prompt() -> None:
    """audiocraft's generate_continuation past the window: the clip's codes prompt the first window."""
    assert plan(125, 100, 60, prompt=25) == (Window(0, 100, 25), Window(60, 65, 40))


def test_a_track_is_charged_in_30_s_units() -> None:
    assert [charge(seconds) for seconds in (1, 8, 30, 30.5, 60, 75, 300)] == [1, 1, 1, 2, 2, 3, 10]


# -- 75 s on the 30 s window -----------------------------------------------------------------------
def test_a_75_s_track_equals_audiocraft_generate(
    tiny_loaded_backend: MusicGenBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = tiny_loaded_backend
    assert backend.max_duration == 30.0
    codes = keep_codes(backend, monkeypatch)  # type: ignore[arg-type]
    task = GenerationTask("long", "slow ambient drone", 75.0, 11, GREEDY)
    listener = run(backend, [task])  # type: ignore[arg-type]
    assert listener.results["long"].shape == (1, 75 * RATE)
    stock, stock_audio = stock_tokens(backend, task, stride=18.0)  # type: ignore[arg-type]
    assert stock.shape == (1, 4, 3750)
    assert torch.equal(codes["long"], stock)
    np.testing.assert_array_equal(listener.results["long"], stock_audio)
    done, total = zip(*listener.progress_log["long"], strict=True)
    assert set(total) == {total[0]} and done[-1] == total[0] and list(done) == sorted(done)
    assert total[0] >= 3750  # every frame of the track is a step of it (a prompt is prefilled, not stepped)


# -- on a 2 s window --------------------------------------------------------------------------------
def test_sampled_slides_like_stock_with_the_same_seed(small: MusicGenBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    codes = keep_codes(small, monkeypatch)
    task = GenerationTask("s", "techno", 5.0, 4, SamplingParams(temperature=1.0, top_k=50))
    listener = run(small, [task])
    stock, _ = stock_tokens(small, task, stride=SMALL_STRIDE)
    assert stock.shape[-1] == 250
    assert torch.equal(codes["s"], stock)
    assert listener.results["s"].shape == (1, 5 * RATE)


def test_a_sliding_job_keeps_its_row_and_sounds_as_alone(
    small: MusicGenBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs join and leave around it; its re-prefills run in chunks while the others go on stepping."""
    long_job = GenerationTask("long", "drum and bass", 5.0, 7, GREEDY)
    alone = run(small, [long_job]).results["long"]
    decoder = small._require_decoder()
    advance = decoder._advance
    passes: list[tuple[str | None, set[str]]] = []  # per loop iteration: who prefilled, who stepped

    def recording(streams: list[Stream]) -> list[Stream]:
        waiting = next((stream.job_id for stream in streams if not stream.ready), None)
        stepped = advance(streams)
        passes.append((waiting, {stream.job_id for stream in stepped}))
        return stepped

    monkeypatch.setattr(decoder, "_advance", recording)
    others = {
        20: [GenerationTask("a", "piano", 1.5, 1, GREEDY)],
        90: [GenerationTask("b", "strings", 4.0, 2, GREEDY), GenerationTask("c", "harp", 0.5, 3, GREEDY)],
    }
    listener = run(small, [long_job], ScriptedJoin(others))
    np.testing.assert_array_equal(listener.results["long"], alone)
    assert set(listener.results) == {"long", "a", "b", "c"}
    refills = [stepped for waiting, stepped in passes if waiting == "long"]
    assert len(refills) >= 3 * 5  # three re-prefills of 40 positions, 8 a pass (plus the last column)
    assert sum("b" in stepped for stepped in refills) >= 5, "the others stalled while it was prefilled again"
    assert all("long" not in stepped for stepped in refills)


def test_progress_runs_over_every_window(small: MusicGenBackend) -> None:
    listener = run(small, [GenerationTask("p", "lofi", 5.0, 1, GREEDY)])
    log = listener.progress_log["p"]
    done = [entry[0] for entry in log]
    assert {entry[1] for entry in log} == {log[0][1]}
    assert done == sorted(done) and done[0] == 0 and done[-1] == log[0][1]
    assert log[0][1] == 250 + 4 * 3  # 250 frames, and each window's delay tail (3 columns for 4 codebooks)


def test_an_extension_past_the_window_equals_generate_continuation(small: MusicGenBackend, tmp_path: Path) -> None:
    clip_path = tone_clip(tmp_path / "clip.opus", seconds=0.5)
    task = GenerationTask("x", "lofi", 2.0, 3, GREEDY, continue_from=str(clip_path))
    listener = run(small, [task])
    model = small._require()
    clip = read_clip(str(clip_path), RATE, 1)
    cut = continuation_plan(clip.shape[-1], task.duration, model)
    assert cut.total_frames > model.max_duration * model.frame_rate  # it does slide
    model.set_generation_params(
        duration=cut.total_frames / model.frame_rate, extend_stride=SMALL_STRIDE, **stock_params(task.sampling)
    )
    stock = model.generate_continuation(clip[:, -cut.context_samples :], RATE, [task.prompt])
    ours = listener.results["x"]
    assert ours.shape == (1, clip.shape[-1] + 2 * RATE)
    np.testing.assert_array_equal(ours[:, clip.shape[-1] :], stock[0, :, cut.context_samples :].numpy())


def test_cancelled_while_prefilled_again_it_leaves(small: MusicGenBackend) -> None:
    first_window = 100 + 3  # its steps: 100 frames and the delay tail
    listener = RecordingListener(cancel_after={"c": 1 + first_window})  # the up-front total, then every step
    small.generate([GenerationTask("c", "noise", 5.0, 1, GREEDY)], listener)
    assert not listener.results and not listener.errors
    assert len(listener.progress_log["c"]) == 1 + first_window  # not one step of the second window


def test_the_static_step_slides_like_the_per_job_path(
    small_window_dir: Path, small: MusicGenBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA fast path's slot is freed while a window re-prefills and loaded again after (eager, on the CPU)."""
    from generation.backends.static_decoding import StaticDecoding

    static = load_small(small_window_dir, max_jobs=4)
    decoder = static._require_decoder()
    decoder.static = StaticDecoding(
        static._require(), decoder.attention, max_jobs=4, graphs=False, min_rows=decoder.plan.linear.min_rows
    )
    tasks = [GenerationTask("long", "dub", 5.0, 2, GREEDY), GenerationTask("short", "folk", 1.0, 3, GREEDY)]
    expected = run(small, tasks).results
    got = run(static, tasks).results
    assert static._require_decoder().static is not None
    for job in expected:
        np.testing.assert_array_equal(got[job], expected[job], err_msg=job)


def test_the_deployment_cap_goes_up_to_300_s() -> None:
    from pydantic import ValidationError

    from generation.settings import EngineSettings

    assert EngineSettings(_env_file=None, max_duration=300).max_duration == 300  # type: ignore[call-arg]
    assert EngineSettings(_env_file=None).max_duration == 30  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        EngineSettings(_env_file=None, max_duration=301)  # type: ignore[call-arg]
