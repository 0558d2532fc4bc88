"""Test doubles with the real backend's shape, and small helpers to read audio back."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from generation import encode
from generation.backends.base import Backend, BatchListener, GenerationTask, Join
from generation.backends.musicgen import MusicGenBackend


@dataclass
class RecordingListener:
    """A BatchListener that keeps everything it is told; can cancel a job after some steps."""

    cancel_after: dict[str, int] = field(default_factory=dict)
    results: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    progress_log: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    codes: dict[str, np.ndarray] = field(default_factory=dict)  # of the tasks that keep them

    def progress(self, job_id: str, done: int, total: int) -> None:
        self.progress_log.setdefault(job_id, []).append((done, total))

    def finished(self, job_id: str, wav: np.ndarray, codes: np.ndarray | None = None) -> None:
        self.results[job_id] = wav
        if codes is not None:
            self.codes[job_id] = codes

    def failed(self, job_id: str, error: BaseException) -> None:
        self.errors[job_id] = error

    def is_cancelled(self, job_id: str) -> bool:
        steps = len(self.progress_log.get(job_id, []))
        return job_id in self.cancel_after and steps >= self.cancel_after[job_id]


class FaultyBackend:
    """Wraps a real backend; ``fault(tasks)`` may raise before the batch runs. Records batch sizes."""

    def __init__(self, inner: Backend, fault: Callable[[Sequence[GenerationTask]], None] | None = None) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.fault = fault
        self.batches: list[list[str]] = []  # the prompts each batch started with
        self.joined: list[list[str]] = []  # the prompts that joined each batch while it ran
        self.started: list[str] = []  # every prompt in the order it started, joined ones included
        self.freed = 0
        self.lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    @property
    def max_duration(self) -> float:
        return self.inner.max_duration

    def load(self) -> None:
        self.inner.load()

    def generate(self, tasks: Sequence[GenerationTask], listener: BatchListener, join: Join | None = None) -> None:
        with self.lock:
            self.batches.append([task.prompt for task in tasks])
            self.joined.append([])
            self.started.extend(task.prompt for task in tasks)
        if self.fault is not None:
            self.fault(tasks)
        self.inner.generate(tasks, listener, None if join is None else self._recording(join))

    def _recording(self, join: Join) -> Join:
        """``join``, recording the prompts of the jobs that joined this batch."""

        def recorded(free: int) -> list[GenerationTask]:
            tasks = join(free)
            with self.lock:
                self.joined[-1].extend(task.prompt for task in tasks)
                self.started.extend(task.prompt for task in tasks)
            return tasks

        return recorded

    def free_memory(self) -> None:
        self.freed += 1


def oom_over(limit: int) -> Callable[[Sequence[GenerationTask]], None]:
    def fault(tasks: Sequence[GenerationTask]) -> None:
        if len(tasks) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return fault


def tiny_backend(model_dir: object, **kwargs: object) -> MusicGenBackend:
    return MusicGenBackend(str(model_dir), device="cpu", **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Decoded:
    sample_rate: int
    channels: int
    duration: float
    samples: np.ndarray


def decode(data: bytes) -> Decoded:
    """Decode a file's bytes back with PyAV (FFmpeg's decoders), as float32 in [-1, 1]."""
    samples, rate = encode.decode(data)
    return Decoded(rate, samples.shape[0], samples.shape[1] / rate, samples)


def http_error(status: int, code: int = 0, message: str = "error") -> Exception:
    """A discord.py HTTP exception as its HTTP client raises it."""
    from unittest import mock

    import discord

    response = mock.Mock(status=status, reason=message)
    if status >= 500:
        return discord.DiscordServerError(response, {"code": code, "message": message})
    return discord.HTTPException(response, {"code": code, "message": message})


def spec_reply(*, token_usable: bool = True) -> object:
    """A :class:`bot.reply.Reply` double, spec'd so that a wrong call fails like the real one."""
    from unittest import mock

    import discord

    from bot.reply import Reply

    reply = mock.create_autospec(Reply, instance=True, user_id=7, channel_id=1, guild_id=2)
    reply.token_usable.return_value = token_usable
    reply.client = mock.create_autospec(discord.Client, instance=True)
    reply.client.user = mock.Mock(id=99)
    reply.webhook = mock.create_autospec(discord.Webhook, instance=True)
    reply.channel = mock.create_autospec(discord.PartialMessageable, instance=True)
    reply.channel.history.side_effect = lambda **kwargs: _messages([])
    return reply


async def _messages(messages: list[object]) -> AsyncIterator[object]:
    for message in messages:
        yield message


def channel_history(reply: object, messages: list[object]) -> None:
    """Make ``spec_reply()``'s channel history yield ``messages`` (newest first), as often as it is read."""
    reply.channel.history.side_effect = lambda **kwargs: _messages(messages)  # type: ignore[attr-defined]
