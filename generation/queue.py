"""Where jobs wait, and how a batch is taken from them.

:class:`JobQueue` is the seam a queue plugs into (a Redis-backed one could, too).
:class:`FairQueue` serves owners in turn (round-robin), so one user's five jobs cannot
starve everybody else; with no owners it is first come, first served.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item", bound="Batchable")


class Batchable(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def batch_key(self) -> Hashable: ...


class JobQueue(Protocol[Item]):
    def put(self, item: Item) -> None: ...

    def remove(self, job_id: str) -> bool: ...

    def positions(self) -> dict[str, int]:
        """job id -> 1-based position in the order jobs will start."""

    async def take_batch(self, max_size: int, window: float) -> list[Item]:
        """Wait for a job, then take it and up to ``max_size - 1`` compatible ones.

        ``window`` seconds are given to late companions once the first job is there.
        Returns ``[]`` once the queue is closed.
        """

    def take_ready(self, max_size: int, key: Hashable) -> list[Item]:
        """Take up to ``max_size`` waiting jobs with batch key ``key`` now, in fair order (may be ``[]``)."""

    def close(self) -> list[Item]:
        """Stop; wake the taker; return what was still waiting."""

    def __len__(self) -> int: ...


T = TypeVar("T")


class Owned(Batchable, Protocol):
    """A queue item that knows who asked for it (``None``: nobody in particular)."""

    @property
    def owner(self) -> str | None: ...


Job = TypeVar("Job", bound=Owned)


# -- the fair queue ----------------------------------------------------------------------------


def round_robin(lanes: Iterable[Iterable[T]]) -> Iterator[T]:
    """The first item of every lane in lane order, then every lane's second item, and so on."""
    iterators = [iter(lane) for lane in lanes]
    while iterators:
        still_going: list[Iterator[T]] = []
        for iterator in iterators:
            for item in iterator:  # at most one item per lane per round
                yield item
                still_going.append(iterator)
                break
        iterators = still_going


class FairQueue(Generic[Job]):
    """Round-robin across owners; a drop-in for :class:`~generation.queue.FifoQueue`.

    The rules:

    * Every owner with waiting jobs has a lane (its jobs, first come first served) and a
      place in the *rotation*. An owner joins the back of the rotation when their first
      waiting job arrives, and leaves it when they have no job waiting any more.
    * The next job to start is the first job of the owner at the front of the rotation;
      an owner who just got a job started goes to the back of the rotation.
    * So the start order, if nothing else arrived, is by *rounds*: each owner's k-th
      waiting job is in round k, and within a round owners keep rotation order.
      :meth:`positions` reports exactly that order, which is what :meth:`take_batch`
      takes when ``max_size`` is 1.
    * A batch is the next job in that order plus up to ``max_size - 1`` more jobs with the
      same ``batch_key``, picked in that same order (so a batch mixes owners). Every owner
      served by a batch goes to the back, in the order of their last job in it; owners skipped
      because their jobs need another batch key keep their place at the front.
    * Jobs without an owner (``owner is None``) share one anonymous lane: together they
      get one turn per round, like a single user, so a script submitting anonymous
      jobs in bulk cannot starve named users. With only anonymous jobs this is FIFO.

    Job ids must be unique among waiting jobs. Every operation is O(n) at worst.
    """

    def __init__(self) -> None:
        self._lanes: dict[str | None, deque[Job]] = {}  # insertion order is the rotation
        self._lane_of: dict[str, str | None] = {}  # job id -> owner
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._lane_of)

    @property
    def closed(self) -> bool:
        return self._closed

    def count(self, owner: str | None) -> int:
        """How many of ``owner``'s jobs are waiting."""
        return len(self._lanes.get(owner, ()))

    def put(self, item: Job) -> None:
        """Queue ``item`` at the end of its owner's lane (a new owner joins the rotation at the back)."""
        if self._closed:
            raise RuntimeError("queue is closed")
        if item.job_id in self._lane_of:
            raise ValueError(f"job {item.job_id} is already queued")
        self._lanes.setdefault(item.owner, deque()).append(item)
        self._lane_of[item.job_id] = item.owner
        self._changed.set()

    def remove(self, job_id: str) -> bool:
        """Drop a waiting job; False if it is not waiting. An emptied lane leaves the rotation."""
        if job_id not in self._lane_of:
            return False
        owner = self._lane_of.pop(job_id)
        lane = self._lanes[owner]
        _delete_job(lane, job_id)
        if not lane:
            del self._lanes[owner]
        return True

    def ordered(self) -> list[Job]:
        """Every waiting job, in the order they would start one at a time if nothing else arrived."""
        return list(round_robin(self._lanes.values()))

    def positions(self) -> dict[str, int]:
        """job id -> 1-based position in :meth:`ordered`."""
        return {item.job_id: index for index, item in enumerate(self.ordered(), start=1)}

    async def take_batch(self, max_size: int, window: float = 0.0) -> list[Job]:
        """Wait for a job, give companions ``window`` seconds, then take a batch (see the class rules).

        The window is skipped, or cut short, once ``max_size`` jobs share the next job's
        batch key. Returns ``[]`` once the queue is closed.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        while True:
            await self._wait_for_items()
            await self._gather(max_size, window)
            if self._closed:
                return []
            if self._lanes:  # they may all have been cancelled during the window
                return self._take(max_size)

    def take_ready(self, max_size: int, key: Hashable) -> list[Job]:
        """Take up to ``max_size`` waiting jobs with ``key`` now, in start order (the join check of a running batch)."""
        if max_size < 1 or not self._lane_of or self._closed:
            return []
        return self._take(max_size, key)

    def close(self) -> list[Job]:
        """Refuse new jobs, wake the taker (who gets ``[]``), and return what was waiting, in order."""
        self._closed = True
        left = self.ordered()
        self._lanes.clear()
        self._lane_of.clear()
        self._changed.set()
        return left

    # -- internals ---------------------------------------------------------------------------
    def _head(self) -> Job:
        return next(iter(self._lanes.values()))[0]

    def _companions(self) -> int:
        """How many waiting jobs could share a batch with the next job (itself included)."""
        key = self._head().batch_key
        return sum(1 for lane in self._lanes.values() for item in lane if item.batch_key == key)

    async def _wait_for_items(self) -> None:
        while not self._lanes and not self._closed:
            self._changed.clear()
            await self._changed.wait()

    async def _gather(self, max_size: int, window: float) -> None:
        if window <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while not self._closed and self._lanes and self._companions() < max_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, max_size: int, key: Hashable | None = None) -> list[Job]:
        """Up to ``max_size`` jobs with ``key`` (default: the next job's) in start order; served owners go back."""
        order = self.ordered()
        if key is None:
            key = order[0].batch_key
        batch = [item for item in order if item.batch_key == key][:max_size]
        if not batch:
            return []
        for item in batch:
            self._lane_of.pop(item.job_id)
            _delete_job(self._lanes[item.owner], item.job_id)
        self._send_to_back(item.owner for item in batch)
        log.debug("took a batch of %d (%s) for %d owner(s)", len(batch), key, len({i.owner for i in batch}))
        return batch

    def _send_to_back(self, served: Iterable[str | None]) -> None:
        """Served owners go to the back in the order of their last job served; emptied lanes leave.

        So what is left keeps the order :meth:`ordered` promised: after a batch that took
        ann1, bob1, ann2 from ann1 bob1 ann2 bob2 ann3, bob2 starts before ann3.
        """
        last = {owner: index for index, owner in enumerate(served)}
        for owner in sorted(last, key=last.__getitem__):
            lane = self._lanes.pop(owner)
            if lane:
                self._lanes[owner] = lane


def _delete_job(lane: deque[Job], job_id: str) -> None:
    for index, item in enumerate(lane):
        if item.job_id == job_id:
            del lane[index]
            return
    raise KeyError(job_id)  # the lane index is out of step: a bug
