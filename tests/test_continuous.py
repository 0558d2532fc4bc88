"""Continuous batching: jobs join a running batch between steps, and their music does not change.

The guarantee under test, bit for bit on a tiny MusicGen: a job's codes (and so its
audio) do not depend on when it joined or who it ran with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from generation.backends.base import GenerationTask
from generation.backends.musicgen import MusicGenBackend
from generation.jobs import SamplingParams
from tests.helpers import RecordingListener, tiny_backend
from tests.test_continuation import tone_clip


def task(job_id: str, prompt: str, duration: float, seed: int, **sampling: float) -> GenerationTask:
    return GenerationTask(job_id, prompt, duration, seed, SamplingParams(**sampling))  # type: ignore[arg-type]


@dataclass
class ScriptedJoin:
    """A join check that hands out jobs at given loop iterations (iteration k comes after k decode steps)."""

    script: dict[int, list[GenerationTask]]
    calls: int = 0
    offered: list[int] = field(default_factory=list)  # free rows at each call

    def __call__(self, free: int) -> list[GenerationTask]:
        self.offered.append(free)
        tasks = self.script.get(self.calls, [])
        self.calls += 1
        assert len(tasks) <= free, f"the script hands out {len(tasks)} jobs but only {free} rows are free"
        return tasks


@pytest.fixture(scope="module")
def backend(tiny_words_model_dir: Path) -> MusicGenBackend:
    loaded = tiny_backend(tiny_words_model_dir, max_jobs=8, prefill_chunk=16)
    loaded.load()
    return loaded


def alone(backend: MusicGenBackend, job: GenerationTask) -> np.ndarray:
    listener = RecordingListener()
    backend.generate([job], listener)
    return listener.results[job.job_id]


def test_jobs_joining_mid_run_sound_exactly_as_alone(backend: MusicGenBackend, tmp_path: Path) -> None:
    """Joins at steps 0, 3, 11 and 30, up to 7 jobs at once, one prefilling meanwhile, leaving at different lengths."""
    clip = tone_clip(tmp_path / "clip.opus", seconds=2.0)
    first = [task("a", "calm piano", 1.0, 1), task("b", "a long prompt about heavy metal guitars at night", 0.8, 2)]
    extend = GenerationTask("d", "lofi", 0.6, 4, SamplingParams(), continue_from=str(clip))
    script = {
        0: [task("c", "jazz trio", 0.5, 3, temperature=0.8, top_p=0.9)],
        3: [extend, task("e", "ambient pads", 0.7, 5, temperature=0.0)],
        11: [task("f", "drum and bass with a wobbly bass line", 0.4, 6, cfg_coef=5.0)],
        30: [task("g", "strings", 0.3, 7)],
    }
    join = ScriptedJoin(script)
    listener = RecordingListener()
    backend.generate(first, listener, join)
    jobs = first + [job for tasks in script.values() for job in tasks]
    assert set(listener.results) == {job.job_id for job in jobs}, listener.errors
    assert join.offered[:4] == [6, 5, 5, 5]  # 8 rows of jobs: 2 running, then 3, then 5 (d prefills meanwhile)
    assert join.offered[31] == 2  # after g joined at 30: six jobs at once (a, b, d, e, f, g; c is done)
    for job in jobs:
        np.testing.assert_array_equal(listener.results[job.job_id], alone(backend, job), err_msg=job.job_id)


def test_a_prefill_does_not_hold_running_jobs_up(backend: MusicGenBackend, tmp_path: Path) -> None:
    """While a continuation prefills in chunks, the running job still steps once per loop iteration."""
    clip = tone_clip(tmp_path / "clip.opus", seconds=4.0)  # 200 frames: 13 chunks of 16 positions
    extend = GenerationTask("x", "lofi", 0.5, 4, SamplingParams(), continue_from=str(clip))
    join = ScriptedJoin({1: [extend]})
    listener = RecordingListener()
    backend.generate([task("r", "calm piano", 1.0, 1)], listener, join)
    steps = [done for done, _ in listener.progress_log["r"]]
    assert steps == list(range(len(steps)))  # one step per iteration, none skipped or doubled
    assert listener.progress_log["x"][0][0] == 0
    assert set(listener.results) == {"r", "x"}


def test_a_finished_job_frees_its_row_for_the_next(backend: MusicGenBackend) -> None:
    join = ScriptedJoin({})
    listener = RecordingListener()
    backend.generate([task("short", "calm piano", 0.2, 1), task("long", "strings", 0.6, 2)], listener, join)
    short_steps = len(listener.progress_log["short"]) - 1  # minus the up-front total
    assert join.offered[short_steps - 1] == 6 and join.offered[short_steps] == 7  # free the step after it ends
