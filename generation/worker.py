"""The engine: a queue in front of a batching worker, with one error boundary.

* Generation runs on one dedicated thread (the GPU is one device; torch releases the
  GIL in its kernels), so the event loop keeps answering while a batch decodes.
* Each batch takes every compatible waiting job (same model) up to ``max_batch``.
* Encoding runs on a small thread pool while the next batch generates.
* Errors: an out-of-memory error frees the cache and splits the batch in two; any
  other error also splits, which isolates the job that causes it. A job that fails
  alone fails with a readable reason; the worker goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from generation.admission import Throughput, ThroughputMeter
from generation.backends.base import Backend, GenerationTask, Join
from generation.encode import EncodeOptions, encode, normalize
from generation.errors import (
    OOM_REASON,
    EngineClosed,
    GenerationError,
    InvalidJob,
    ModelLoadError,
    is_out_of_memory,
)
from generation.events import Cancelled, Encoding, Failed, Finished, JobHandle, JobState, Progress, Queued, Started
from generation.jobs import JobRequest, Normalization
from generation.queue import FairQueue, JobQueue
from generation.settings import EngineSettings

log = logging.getLogger(__name__)

BackendFactory = Callable[[str], Backend]


def new_error_id() -> str:
    return secrets.token_hex(4)


def _load(backend: Backend) -> None:
    """Load on the generation thread; then move the model's objects out of the GC's way.

    A full collection over a freshly loaded model's Python objects holds the GIL for
    ~0.2 s, a stall the event loop (and Discord's heartbeat) would feel.
    """
    if not backend.loaded:
        backend.load()
        gc.freeze()


@dataclass(frozen=True)
class _Pending:
    """A queued job as the queue sees it."""

    handle: JobHandle

    @property
    def job_id(self) -> str:
        return self.handle.id

    @property
    def batch_key(self) -> str:
        return self.handle.request.batch_key

    @property
    def owner(self) -> str | None:
        return self.handle.request.owner


class _Listener:
    """The backend's window onto the engine: runs on the generation thread, hops to the loop."""

    def __init__(self, engine: Engine, backend: Backend, interval: float) -> None:
        self._engine = engine
        self._backend = backend
        self._loop = engine.loop
        self._interval = interval
        self._last: dict[str, float] = {}
        self.ended: set[str] = set()

    def progress(self, job_id: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last.get(job_id, 0.0) < self._interval:
            return
        self._last[job_id] = now
        self._loop.call_soon_threadsafe(self._engine._emit, job_id, Progress(done, total))

    def finished(self, job_id: str, wav: np.ndarray, codes: np.ndarray | None = None) -> None:
        self.ended.add(job_id)
        sample_rate = self._backend.sample_rate
        handle = self._engine._handles.get(job_id)
        if handle is None:  # cancelled meanwhile
            return
        try:  # normalising needs torch, and torch work stays on this thread (see encode.normalize)
            wav = normalize(wav, sample_rate, handle.request.normalization)
        except Exception as exc:
            self.failed(job_id, exc)
            return
        self._loop.call_soon_threadsafe(self._engine._on_generated, job_id, wav, sample_rate, codes)

    def failed(self, job_id: str, error: BaseException) -> None:
        self.ended.add(job_id)
        self._loop.call_soon_threadsafe(self._engine._on_job_error, job_id, error)

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self._engine._cancelled


class _Run:
    """The jobs of one decode loop: those it started with and those that joined it."""

    JOIN_POLL = 1.0  # seconds between checks that the event loop still runs, while a join waits for it

    def __init__(self, engine: Engine, key: str, handles: Sequence[JobHandle], listener: _Listener) -> None:
        self._engine = engine
        self.key = key
        self.handles = list(handles)
        self._listener = listener

    def _rows_free(self) -> int:
        """``max_batch`` less the jobs of this run still generating (whatever the backend's own cap)."""
        generating = sum(1 for h in self.handles if not h.done and h.id not in self._listener.ended)
        return self._engine.settings.max_batch - generating

    def join(self, free: int) -> list[GenerationTask]:
        """The join check, on the generation thread: cheap when nothing waits; else one hop to the event loop."""
        engine = self._engine
        if free <= 0 or engine._closing or not len(engine._queue):
            return []
        future = asyncio.run_coroutine_threadsafe(self._take(free), engine.loop)
        while True:
            try:
                return future.result(timeout=self.JOIN_POLL)
            except concurrent.futures.TimeoutError:
                if engine.loop.is_closed() or not engine.loop.is_running():
                    future.cancel()
                    return []

    async def _take(self, free: int) -> list[GenerationTask]:
        engine = self._engine
        taken = [pending.handle for pending in engine._queue.take_ready(min(free, self._rows_free()), self.key)]
        if not taken:
            return []
        joined = [handle for handle in taken if not handle.done]
        engine._start(joined)
        self.handles.extend(joined)
        engine._announce_positions()
        log.debug("%d job(s) joined the running batch", len(joined))
        return [engine._task(handle) for handle in joined]


class Engine:
    """Submit :class:`JobRequest` s, get :class:`JobHandle` s. Use as ``async with Engine(...)``."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        backend_factory: BackendFactory | None = None,
        queue: JobQueue[Any] | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self._backend_factory = backend_factory or self._musicgen
        self._queue: JobQueue[Any] = queue if queue is not None else FairQueue()
        self._backends: dict[str, Backend] = {}
        self._handles: dict[str, JobHandle] = {}
        self._cancelled: set[str] = set()
        self._positions: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._serve_task: asyncio.Task[None] | None = None
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jamgen-generate")
        self._encoders = ThreadPoolExecutor(self.settings.encode_threads, thread_name_prefix="jamgen-encode")
        self._closing = False
        self.throughput = Throughput()
        self._meter = ThroughputMeter(self.throughput)
        self.loop: asyncio.AbstractEventLoop

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._serve_task = asyncio.create_task(self._serve(), name="jamgen-worker")

    async def close(self, reason: str = "The music engine is shutting down.") -> None:
        """Cancel waiting and running jobs, then wait for every thread and task to finish."""
        self._closing = True
        for pending in self._queue.close():
            self._emit(pending.job_id, Cancelled(reason))
        for handle in list(self._handles.values()):
            self.cancel(handle.id, reason)
        if self._serve_task is not None:
            await self._serve_task
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._gpu.shutdown, wait=True)
        await asyncio.to_thread(self._encoders.shutdown, wait=True)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def warm_up(self, model: str | None = None) -> None:
        """Load a model now rather than on its first job (raises :class:`ModelLoadError`)."""
        backend = self._backend(model or self.settings.model)
        await self.loop.run_in_executor(self._gpu, _load, backend)

    # -- the public API ------------------------------------------------------------------
    def submit(self, request: JobRequest, job_id: str | None = None) -> JobHandle:
        """Queue ``request``; ``job_id`` keeps a journaled job's id when it is resubmitted after a restart."""
        if self._closing:
            raise EngineClosed("The music engine is shutting down; try again in a minute.")
        if request.duration > self.settings.max_duration:
            raise InvalidJob(f"duration: the limit is {self.settings.max_duration:g} seconds")
        if job_id in self._handles:
            raise ValueError(f"job {job_id} is already in the engine")
        handle = JobHandle(job_id or secrets.token_hex(6), request)
        self._handles[handle.id] = handle
        self._queue.put(_Pending(handle))
        self._announce_positions()
        return handle

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a queued or running job. A running job's rows leave its batch at the next step."""
        handle = self._handles.get(job_id)
        if handle is None or handle.done:
            return False
        if not self._queue.remove(job_id):
            self._cancelled.add(job_id)
        self._emit(job_id, Cancelled(reason))
        self._announce_positions()
        return True

    def get(self, job_id: str) -> JobHandle | None:
        return self._handles.get(job_id)

    def positions(self) -> dict[str, int]:
        """Queued job id -> 1-based position in the order jobs will start."""
        return self._queue.positions()

    def waiting(self) -> list[tuple[str, float]]:
        """Queued jobs in the order they will start, with their requested seconds."""
        positions = self.positions()
        queued = sorted((handle for handle in self._handles.values() if handle.id in positions),
                        key=lambda handle: positions[handle.id])
        return [(handle.id, handle.request.duration) for handle in queued]

    def jobs(self) -> list[JobHandle]:
        """Every job that has not ended, in submission order."""
        return list(self._handles.values())

    # -- the serving loop ------------------------------------------------------------------
    async def _serve(self) -> None:
        while True:
            batch = await self._queue.take_batch(self.settings.max_batch, self.settings.batch_window)
            if not batch:
                return
            self._announce_positions()
            await self._run_batch([pending.handle for pending in batch])

    async def _run_batch(self, handles: Sequence[JobHandle], joins: bool = True) -> None:
        """Run one decode loop; with ``joins`` (and continuous batching) waiting jobs join it between steps."""
        handles = [handle for handle in handles if not handle.done]
        if not handles:
            return
        self._start(handles)
        backend = self._backend(handles[0].request.model)
        listener = _Listener(self, backend, self.settings.progress_interval)
        run = _Run(self, handles[0].request.batch_key, handles, listener)
        join = run.join if joins and self.settings.batching == "continuous" else None
        log.info("batch of %d on %s (%s)", len(handles), backend.model_id, "joins open" if join else "closed")
        self._meter.busy()
        try:
            tasks = [self._task(handle) for handle in handles]
            await self.loop.run_in_executor(self._gpu, self._generate, backend, tasks, listener, join)
        except Exception as exc:  # the one boundary for model errors
            left = [handle for handle in run.handles if handle.id not in listener.ended and not handle.done]
            await self._recover(backend, left, exc)
        finally:
            self._cancelled.difference_update(handle.id for handle in run.handles)
            self._meter.finished(0.0, final=True)

    def _start(self, handles: Sequence[JobHandle]) -> None:
        for handle in handles:
            if handle.state is JobState.QUEUED:
                self._emit(handle.id, Started())

    @staticmethod
    def _generate(backend: Backend, tasks: list[GenerationTask], listener: _Listener, join: Join | None) -> None:
        _load(backend)
        backend.generate(tasks, listener, join)

    async def _recover(self, backend: Backend, handles: list[JobHandle], exc: Exception) -> None:
        if not handles:
            return
        if isinstance(exc, ModelLoadError):
            for handle in handles:
                self._emit(handle.id, Failed(str(exc)))
            return
        oom = is_out_of_memory(exc)
        if oom:
            log.warning("out of memory with a batch of %d: freeing the cache and splitting", len(handles))
            await self.loop.run_in_executor(self._gpu, backend.free_memory)
        if len(handles) > 1:
            if not oom:
                log.warning("batch of %d failed (%r): splitting to isolate the cause", len(handles), exc)
            middle = len(handles) // 2
            await self._run_batch(handles[:middle], joins=False)
            await self._run_batch(handles[middle:], joins=False)
            return
        handle = handles[0]
        if not oom and not isinstance(exc, GenerationError) and handle.attempts < self.settings.job_attempts:
            log.warning("job %s crashed the worker (%r) on run %d: queueing it again", handle.id, exc, handle.attempts)
            handle.attempts += 1
            self._queue.put(_Pending(handle))
            self._announce_positions()
            return
        self._fail_alone(handle, exc, oom)

    def _fail_alone(self, handle: JobHandle, exc: BaseException, oom: bool) -> None:
        error_id = new_error_id()
        log.error("job %s failed [error %s]", handle.id, error_id, exc_info=exc)
        if oom:
            reason = OOM_REASON
        elif isinstance(exc, GenerationError):
            reason = str(exc)
        else:
            reason = f"The model failed on this prompt ({type(exc).__name__}, error id {error_id})."
        self._emit(handle.id, Failed(reason))

    # -- callbacks on the loop thread ------------------------------------------------------
    def _emit(self, job_id: str, event: Any) -> bool:
        """Every event goes through here; an ended job leaves the books."""
        handle = self._handles.get(job_id)
        if handle is None or not handle.emit(event):
            return False
        if handle.done:
            del self._handles[job_id]
        return True

    def _on_job_error(self, job_id: str, error: BaseException) -> None:
        handle = self._handles.get(job_id)
        if handle is not None:
            self._fail_alone(handle, error, is_out_of_memory(error))

    def _on_generated(self, job_id: str, wav: np.ndarray, sample_rate: int, codes: np.ndarray | None = None) -> None:
        handle = self._handles.get(job_id)
        if handle is None or not self._emit(job_id, Encoding()):
            return
        self._meter.finished(handle.request.duration)
        task = asyncio.create_task(self._encode(handle, wav, sample_rate, codes), name=f"encode-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _encode(self, handle: JobHandle, wav: np.ndarray, sample_rate: int, codes: np.ndarray | None) -> None:
        request = handle.request
        # already normalised on the generation thread
        options = EncodeOptions(request.format, request.bitrate_kbps, Normalization.NONE, request.max_file_bytes)
        try:
            audio = await self.loop.run_in_executor(self._encoders, encode, wav, sample_rate, options)
        except Exception as exc:
            self._fail_alone(handle, exc, oom=False)
        else:
            self._emit(handle.id, Finished(audio if codes is None else replace(audio, codes=codes)))

    # -- helpers -----------------------------------------------------------------------------
    def _task(self, handle: JobHandle) -> GenerationTask:
        request = handle.request
        return GenerationTask(
            handle.id, request.prompt, request.duration, request.seed, request.sampling, request.continue_from,
            request.melody_from, request.continue_codes, request.keep_codes,
        )

    def _backend(self, model_id: str) -> Backend:
        if model_id not in self._backends:
            self._backends[model_id] = self._backend_factory(model_id)
        return self._backends[model_id]

    def _musicgen(self, model_id: str) -> Backend:
        from generation.backends.musicgen import MusicGenBackend

        settings = self.settings
        return MusicGenBackend(
            model_id, device=settings.device, precision=settings.precision, linear=settings.linear,
            prefill_chunk=settings.prefill_chunk, max_jobs=settings.max_batch, cuda_graphs=settings.cuda_graphs,
        )

    def _announce_positions(self) -> None:
        positions = self._queue.positions()
        for job_id, position in positions.items():
            if self._positions.get(job_id) != position:
                self._emit(job_id, Queued(position))
        self._positions = positions
