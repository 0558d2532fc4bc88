"""Sharing one GPU fairly: who may submit now, and how long each will wait.

The order jobs start in is :class:`~generation.queue.FairQueue`'s (round-robin across users).

* :class:`Admission` applies per-user limits (jobs in progress, a token bucket over
  time) and the global queue cap, and refuses with a :class:`RateLimited` that says
  in plain English when to try again.
* :class:`Throughput` measures generation speed, and :func:`estimate_waits` (static
  batching: closed batches, one after another) or :func:`estimate_waits_continuous`
  (continuous batching: a queued job takes the first row that frees) turns it into
  per-job ETAs.

Nothing here knows about Discord: owners and admission keys are opaque strings.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from generation.errors import GenerationError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")


# -- admission ------------------------------------------------------------------------------

RateLimitReason = Literal["active", "rate", "queue_full"]
TIME_EPSILON = 1e-9  # seconds of float slack when comparing times


@dataclass(frozen=True)
class UserLimits:
    """Per-user limits, and the global cap on waiting jobs.

    ``max_active``: jobs one user may have queued or running at once.
    ``rate_count`` per ``rate_window`` seconds: a token bucket holding ``rate_count``
    tokens, refilled continuously at ``rate_count / rate_window`` tokens per second;
    every job costs one token. ``queue_cap``: waiting jobs, all users together.
    """

    max_active: int = 2
    rate_count: int = 5
    rate_window: float = 600.0
    queue_cap: int = 100

    def __post_init__(self) -> None:
        if self.max_active < 1 or self.rate_count < 1 or self.queue_cap < 1:
            raise ValueError("max_active, rate_count and queue_cap must be >= 1")
        if not (math.isfinite(self.rate_window) and self.rate_window > 0):
            raise ValueError(f"rate_window must be a positive number of seconds, got {self.rate_window}")

    def seconds_for(self, tokens: float) -> float:
        """Time the bucket takes to refill ``tokens`` tokens."""
        return tokens * self.rate_window / self.rate_count


class RateLimited(GenerationError):
    """A submission refused by a limit; ``str()`` tells the user when to try again.

    ``reason`` is ``"active"``, ``"rate"`` or ``"queue_full"``; ``retry_after`` is in
    seconds, or ``None`` when it depends on jobs finishing rather than on the clock.
    """

    def __init__(self, reason: RateLimitReason, retry_after: float | None, message: str) -> None:
        super().__init__(message)
        self.reason: RateLimitReason = reason
        self.retry_after = retry_after


def format_wait(seconds: float) -> str:
    """``200`` -> ``"3 min 20 s"``; rounds up to a whole second so that "try again in" is never early."""
    if math.isnan(seconds):
        raise ValueError("seconds is NaN")
    if math.isinf(seconds):
        return "a very long time"
    total = max(0, math.ceil(seconds - TIME_EPSILON))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{value} {unit}" for value, unit in ((hours, "h"), (minutes, "min"), (secs, "s")) if value]
    return " ".join(parts) or "0 s"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _when_jobs_finish(need: int, active: int) -> str:
    if active == 1:
        return "when your job finishes"
    if need == 1:
        return f"when one of your {active} jobs finishes"
    if need >= active:
        return f"when all {active} of your jobs finish"
    return f"when {need} of your {active} jobs finish"


@dataclass
class _Bucket:
    """A token bucket kept as the time it is full again (GCRA): one float per user."""

    full_at: float
    seconds_per_token: float  # of the limits it was last charged with, for refunds


class Admission:
    """Decides whether a user may submit now; keeps one token bucket per key.

    Checks run in this order and the first that fails raises :class:`RateLimited`:
    ``active`` (``active + cost > max_active``), ``rate`` (fewer than ``tokens`` tokens;
    ``tokens`` is ``cost`` unless given: the bot charges a long track more, see
    :func:`generation.windows.charge`), ``queue_full`` (``queued_total + cost > queue_cap``).
    ``exempt`` keys (admins, say) skip the two per-user checks and are never charged tokens, but the global queue
    cap still applies to them: it protects the machine, not other users' turns.

    A bucket that has refilled completely is forgotten (a missing bucket is a full one),
    so idle keys cost no memory; stale buckets are dropped on every check.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        """How many keys have a bucket that is not full (the memory in use)."""
        return len(self._buckets)

    def tokens(self, key: str, limits: UserLimits) -> float:
        """Tokens ``key`` has now (``limits.rate_count`` when full)."""
        debt = self._debt(key, self._clock())
        return max(0.0, limits.rate_count - debt * limits.rate_count / limits.rate_window)

    def check(
        self,
        key: str,
        limits: UserLimits,
        *,
        active: int,
        queued_total: int,
        exempt: bool = False,
        cost: int = 1,
        queue_retry_after: float | None = None,
        tokens: int | None = None,
    ) -> None:
        """Raise :class:`RateLimited` if ``key`` may not submit ``cost`` jobs now; consumes nothing.

        ``active``: the user's jobs queued or running; ``queued_total``: jobs waiting, all
        users; ``queue_retry_after``: the caller's estimate of when the queue has room;
        ``tokens``: what they take from the rate (default ``cost``).
        """
        tokens = cost if tokens is None else tokens
        if cost < 1 or tokens < 1:
            raise ValueError(f"cost and tokens must be >= 1, got {cost} and {tokens}")
        now = self._clock()
        self._prune(now)
        if not exempt:
            self._check_active(limits, active, cost)
            self._check_rate(limits, self._debt(key, now), tokens)
        self._check_queue(limits, queued_total, cost, queue_retry_after)

    def admit(
        self,
        key: str,
        limits: UserLimits,
        *,
        active: int,
        queued_total: int,
        exempt: bool = False,
        cost: int = 1,
        queue_retry_after: float | None = None,
        tokens: int | None = None,
    ) -> None:
        """:meth:`check`, then charge ``tokens`` (default ``cost``) to ``key`` (exempt keys are not charged)."""
        self.check(
            key, limits, active=active, queued_total=queued_total, exempt=exempt, cost=cost,
            queue_retry_after=queue_retry_after, tokens=tokens,
        )
        if exempt:
            return
        now = self._clock()
        bucket = self._buckets.get(key)
        start = max(bucket.full_at, now) if bucket is not None else now
        charged = cost if tokens is None else tokens
        self._buckets[key] = _Bucket(start + limits.seconds_for(charged), limits.seconds_for(1))

    def refund(self, key: str, cost: int = 1) -> None:
        """Give back ``cost`` tokens charged by :meth:`admit` (the submission failed after all): its ``tokens``."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        bucket.full_at -= cost * bucket.seconds_per_token
        if bucket.full_at <= self._clock() + TIME_EPSILON:
            del self._buckets[key]

    # -- internals ---------------------------------------------------------------------------
    def _debt(self, key: str, now: float) -> float:
        """Seconds until ``key``'s bucket is full again (0: full)."""
        bucket = self._buckets.get(key)
        return max(0.0, bucket.full_at - now) if bucket is not None else 0.0

    def _prune(self, now: float) -> None:
        full = [key for key, bucket in self._buckets.items() if bucket.full_at <= now + TIME_EPSILON]
        for key in full:
            del self._buckets[key]

    @staticmethod
    def _check_active(limits: UserLimits, active: int, cost: int) -> None:
        if active + cost > limits.max_active:
            raise active_refusal(limits, active, cost)

    @staticmethod
    def _check_rate(limits: UserLimits, debt: float, cost: int) -> None:
        if cost > limits.rate_count:
            raise rate_refusal(limits, None, cost)
        wait = debt - limits.seconds_for(limits.rate_count - cost)
        if wait > TIME_EPSILON:
            raise rate_refusal(limits, wait, cost)

    @staticmethod
    def _check_queue(limits: UserLimits, queued_total: int, cost: int, retry_after: float | None) -> None:
        if queued_total + cost > limits.queue_cap:
            raise queue_refusal(limits, queued_total, cost, retry_after)


# The refusals, shared with every place that applies these limits (the Redis queue too).


def active_refusal(limits: UserLimits, active: int, cost: int) -> RateLimited:
    """``active + cost > max_active``: the user has too many jobs queued or running."""
    if cost > limits.max_active:
        message = f"You can have at most {_plural(limits.max_active, 'job')} at a time; this asks for {cost}."
    else:
        when = _when_jobs_finish(active + cost - limits.max_active, active)
        message = (
            f"You already have {_plural(active, 'job')} in progress (the limit is {limits.max_active}); "
            f"try again {when}."
        )
    return _refuse("active", None, message)


def rate_refusal(limits: UserLimits, wait: float | None, cost: int) -> RateLimited:
    """Too few tokens: ``wait`` seconds until there are enough, or ``None`` when ``cost > rate_count``."""
    allowance = f"You can start {_plural(limits.rate_count, 'job')} every {format_wait(limits.rate_window)}"
    if wait is None:
        return _refuse("rate", None, f"{allowance}, and this asks for {cost}.")
    counted = f" (this request counts as {cost})" if cost > 1 else ""
    return _refuse("rate", wait, f"{allowance}{counted}; try again in {format_wait(wait)}.")


def queue_refusal(limits: UserLimits, queued_total: int, cost: int, retry_after: float | None) -> RateLimited:
    """``queued_total + cost > queue_cap``; ``retry_after`` is the caller's estimate of when there is room."""
    when = f"in {format_wait(retry_after)}" if retry_after is not None else "once some of them have started"
    message = f"The queue is full ({queued_total} of {limits.queue_cap} places taken); try again {when}."
    return _refuse("queue_full", retry_after, message)


def _refuse(reason: RateLimitReason, retry_after: float | None, message: str) -> RateLimited:
    log.debug("refused (%s): %s", reason, message)
    return RateLimited(reason, retry_after, message)


# -- throughput and ETAs ----------------------------------------------------------------------


class Throughput:
    """Generation speed in audio seconds per wall second, as an exponentially weighted average.

    Each sample is the audio finished over a span of busy wall time (``audio_seconds /
    wall_seconds``; the engine records one per second or so of generating, and at the end of
    each decode loop), weighted ``alpha``; older samples fade by ``1 - alpha`` per sample. ``initial_rate`` is a
    placeholder shown until the first measurement, which replaces it outright (a guess
    should not linger in the average). Samples that are not positive and finite are
    ignored.
    """

    def __init__(self, alpha: float = 0.3, initial_rate: float | None = None) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if initial_rate is not None and not (math.isfinite(initial_rate) and initial_rate > 0):
            raise ValueError(f"initial_rate must be a positive number, got {initial_rate}")
        self.alpha = alpha
        self._rate = initial_rate
        self.samples = 0

    @property
    def rate(self) -> float | None:
        return self._rate

    def record(self, audio_seconds: float, wall_seconds: float) -> None:
        """One sample: the seconds of audio finished in a span of busy time, and the span's wall time."""
        valid = all(math.isfinite(value) and value > 0 for value in (audio_seconds, wall_seconds))
        if not valid:
            log.debug("ignoring throughput sample %r audio s in %r s", audio_seconds, wall_seconds)
            return
        sample = audio_seconds / wall_seconds
        if self.samples == 0 or self._rate is None:
            self._rate = sample
        else:
            self._rate = self.alpha * sample + (1 - self.alpha) * self._rate
        self.samples += 1


Waits = dict[str, tuple[float, float]]  # job id -> (seconds until it starts, seconds until it is done)


class ThroughputMeter:
    """Feeds :class:`Throughput`: audio seconds finished per wall second while the worker is busy.

    The worker calls :meth:`busy` when a decode loop starts, :meth:`finished` for each job it
    finishes, and ``finished(0, final=True)`` when the loop ends. A sample is recorded once at
    least ``MIN_SPAN`` seconds have passed since the last one (and at the end of each loop), so
    that jobs that end together do not make one sample of an instant.
    """

    MIN_SPAN = 1.0

    def __init__(self, throughput: Throughput, clock: Clock = time.monotonic) -> None:
        self._throughput = throughput
        self._clock = clock
        self._since: float | None = None
        self._audio = 0.0

    def busy(self) -> None:
        if self._since is None:
            self._since, self._audio = self._clock(), 0.0

    def finished(self, audio_seconds: float, final: bool = False) -> None:
        if self._since is None:
            return
        self._audio += audio_seconds
        now = self._clock()
        span = now - self._since
        if span >= self.MIN_SPAN or final:
            self._throughput.record(self._audio, span)
            self._since, self._audio = (None, 0.0) if final else (now, 0.0)


def estimate_waits(
    queue: list[tuple[str, float]], *, running_remaining: float, rate: float | None, max_batch: int
) -> Waits | None:
    """ETAs for static batching; ``None`` when ``rate`` is unknown.

    ``queue`` is ``(job id, duration)`` in start order (:meth:`FairQueue.ordered`);
    ``running_remaining`` is the wall time left for the batch running now (0 if idle).
    Jobs are assumed to go in consecutive batches of ``max_batch`` in queue order, each
    taking ``sum(durations) / rate`` wall seconds; a job is done when its batch is.
    """
    if rate is None:
        return None
    _check_rate(rate, max_batch)
    waits: Waits = {}
    start = max(0.0, running_remaining)
    for first in range(0, len(queue), max_batch):
        batch = queue[first : first + max_batch]
        end = start + sum(duration for _, duration in batch) / rate
        for job_id, _ in batch:
            waits[job_id] = (start, end)
        start = end
    return waits


def estimate_waits_continuous(
    queue: list[tuple[str, float]], *, running: list[float], rate: float | None, max_batch: int
) -> Waits | None:
    """ETAs for continuous batching; ``None`` when ``rate`` is unknown.

    ``queue`` is ``(job id, duration)`` in start order (:meth:`FairQueue.ordered`);
    ``running`` holds each running job's remaining wall seconds; ``rate`` is
    :class:`Throughput`'s audio seconds per wall second of the whole batch. The batch has
    ``max_batch`` rows; each queued job, in queue order, takes the first row that frees
    and runs for ``duration * max_batch / rate`` seconds there.

    The model: every row advances at ``rate / max_batch`` audio seconds per wall second,
    however many rows are running. Batching never lowers total throughput, and a row
    never goes faster for having more rows beside it, so ``rate / max_batch`` is at most
    any row's real pace, whatever batch sizes the average was measured over. It is exact
    for a full batch measured over full batches, which is when jobs wait (a job waits
    only while every row is taken); otherwise (an average from light load, a batch
    emptying out at the end) it errs long, never short. Not modelled: the step a job
    waits to join, its prefill, and jobs for another model, which cannot join the batch.
    """
    if rate is None:
        return None
    _check_rate(rate, max_batch)
    row_seconds_per_audio_second = max_batch / rate
    free_at = _rows_free_at(running, max_batch)
    waits: Waits = {}
    for job_id, duration in queue:
        start = heapq.heappop(free_at)
        end = start + duration * row_seconds_per_audio_second
        waits[job_id] = (start, end)
        heapq.heappush(free_at, end)
    return waits


def _rows_free_at(running: list[float], max_batch: int) -> list[float]:
    """When each of the ``max_batch`` rows frees, as a heap: an idle row at 0.

    With more jobs running than rows (the setting was lowered), a row frees only once
    enough of them have finished, so the rows free when the latest ``max_batch`` do.
    """
    if any(math.isnan(left) for left in running):
        raise ValueError("a running job's remaining time is NaN")
    latest = sorted(max(0.0, left) for left in running)[-max_batch:]
    return [0.0] * (max_batch - len(latest)) + latest  # sorted, hence already a heap


def _check_rate(rate: float, max_batch: int) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number, got {rate}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
