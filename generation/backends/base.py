"""The seam between the worker and a model library.

A backend turns a batch of :class:`GenerationTask` into waveforms. It runs on the
worker's generation thread, never on the event loop, and reports back through a
:class:`BatchListener` so that results can stream out as each job finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from generation.jobs import SamplingParams


@dataclass(frozen=True)
class GenerationTask:
    """What a backend needs of one job."""

    job_id: str
    prompt: str
    duration: float
    seed: int
    sampling: SamplingParams
    continue_from: str | None = None  # an audio file to extend by ``duration`` seconds
    melody_from: str | None = None  # an audio file whose melody (chroma) conditions a melody model
    continue_codes: str | None = None  # a file of EnCodec codes [K, T] to extend by ``duration`` seconds
    keep_codes: bool = False  # hand the job's codes to ``finished``


Join = Callable[[int], list[GenerationTask]]
"""The join check: ``join(free_rows)`` returns up to that many waiting jobs, in fair order, for the
running model. It runs between decode steps on the generation thread, so it must be cheap."""


class BatchListener(Protocol):
    """Called from the generation thread; implementations must be thread-safe and quick."""

    def progress(self, job_id: str, done: int, total: int) -> None: ...

    def finished(self, job_id: str, wav: np.ndarray, codes: np.ndarray | None = None) -> None:
        """``wav`` is float32, shape (channels, samples), at the backend's sample rate; ``codes`` (int64 [K, T],
        the prompt's included) only for a task that keeps them."""

    def failed(self, job_id: str, error: BaseException) -> None:
        """Only this job failed (the rest of the batch goes on)."""

    def is_cancelled(self, job_id: str) -> bool: ...


class Backend(Protocol):
    """A loaded-on-demand music model."""

    model_id: str

    @property
    def sample_rate(self) -> int: ...

    @property
    def max_duration(self) -> float: ...

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None:
        """Load the weights (slow, blocking). Raise :class:`~generation.errors.ModelLoadError`."""

    def generate(self, tasks: Sequence[GenerationTask], listener: BatchListener, join: Join | None = None) -> None:
        """Generate every task in one batch; with ``join``, jobs it hands out join the running batch.

        Each job ends with exactly one ``finished`` or ``failed`` call, or by being
        cancelled. An exception out of here concerns every job that has not ended yet,
        joined ones included.
        """

    def free_memory(self) -> None:
        """Release cached accelerator memory after an out-of-memory error."""
