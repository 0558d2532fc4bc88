"""The fair queue: round-robin order, batches, the batching window (generation/queue.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.backends.base import BatchListener, GenerationTask, Join
from generation.jobs import JobRequest
from generation.queue import FairQueue
from generation.settings import EngineSettings
from generation.worker import Engine


@dataclass(frozen=True)
class Job:
    job_id: str
    owner: str | None
    batch_key: str = "m"


def ids(jobs: Sequence[Job]) -> list[str]:
    return [job.job_id for job in jobs]


def in_position_order(queue: FairQueue[Job]) -> list[str]:
    positions = queue.positions()
    assert sorted(positions.values()) == list(range(1, len(queue) + 1))
    return sorted(positions, key=positions.__getitem__)


async def take(queue: FairQueue[Job], max_size: int = 1, window: float = 0.0) -> list[Job]:
    return await asyncio.wait_for(queue.take_batch(max_size, window), 5)


# -- hypothesis: random sequences of put / remove / take -----------------------------------------

OWNERS = ["ann", "bob", "cat", "dan", None]
Put = tuple[str, str | None, str]  # ("put", owner, batch key)
Op = tuple[str, object, object]


def operations(max_batch: int) -> st.SearchStrategy[list[Op]]:
    put = st.tuples(st.just("put"), st.sampled_from(OWNERS), st.sampled_from(["m", "n"]))
    remove = st.tuples(st.just("remove"), st.integers(0, 50), st.none())
    take_op = st.tuples(st.just("take"), st.integers(1, max_batch), st.none())
    return st.lists(st.one_of(put, put, remove, take_op), max_size=80)


@dataclass
class Trace:
    """What happened, step by step, to a queue driven by a list of operations."""

    queue: FairQueue[Job] = field(default_factory=FairQueue)
    put: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    batches: list[list[Job]] = field(default_factory=list)
    starts: list[tuple[int, str | None]] = field(default_factory=list)  # (step, owner)
    waiting: list[Counter[str | None]] = field(default_factory=list)  # owners' waiting jobs after each step


async def replay(ops: list[Op]) -> Trace:
    trace = Trace()
    queue, numbers = trace.queue, itertools.count()
    for step, (kind, a, b) in enumerate(ops):
        if kind == "put":
            job = Job(f"j{next(numbers)}", a, b)  # type: ignore[arg-type]
            queue.put(job)
            trace.put.append(job.job_id)
        elif kind == "remove":
            waiting = ids(queue.ordered())
            target = waiting[a % len(waiting)] if waiting else "nope"  # type: ignore[operator]
            assert queue.remove(target) is bool(waiting)
            trace.removed += [target] if waiting else []
        elif len(queue):  # take; an empty queue would block
            await check_one_take(trace, step, max_size=a)  # type: ignore[arg-type]
        trace.waiting.append(Counter(job.owner for job in queue.ordered()))
    return trace


async def check_one_take(trace: Trace, step: int, max_size: int) -> None:
    """The batch is the first job in position order plus the next same-key jobs in that order."""
    order = trace.queue.ordered()
    assert ids(order) == in_position_order(trace.queue)
    batch = await take(trace.queue, max_size)
    expected = [job for job in order if job.batch_key == order[0].batch_key][:max_size]
    assert batch == expected
    assert len({job.batch_key for job in batch}) == 1
    trace.batches.append(batch)
    trace.starts += [(step, job.owner) for job in batch]


def assert_fair(trace: Trace) -> None:
    """Between two starts of one owner, every owner waiting the whole time in between got a start."""
    by_owner: dict[str | None, list[int]] = {}
    for step, owner in trace.starts:
        by_owner.setdefault(owner, []).append(step)
    for owner, steps in by_owner.items():
        for first, second in itertools.pairwise(steps):
            between = {other for step, other in trace.starts if first < step < second}
            for other in set(OWNERS) - {owner}:
                waited_throughout = all(trace.waiting[t][other] > 0 for t in range(first, second))
                assert not waited_throughout or other in between, (owner, other, first, second)


@settings(max_examples=300, deadline=None)
@given(ops=operations(max_batch=1))
def test_one_at_a_time_every_waiting_owner_gets_a_turn_and_positions_are_the_start_order(ops: list[Op]) -> None:
    async def scenario() -> None:
        trace = await replay(ops)
        assert_fair(trace)
        promised = in_position_order(trace.queue)
        drained = [ids(await take(trace.queue))[0] for _ in range(len(trace.queue))]
        assert drained == promised
        assert len(trace.queue) == 0

    asyncio.run(scenario())


@settings(max_examples=300, deadline=None)
@given(ops=operations(max_batch=4), close_at_end=st.booleans())
def test_no_job_is_lost_or_duplicated_and_batches_never_mix_keys(ops: list[Op], close_at_end: bool) -> None:
    async def scenario() -> None:
        trace = await replay(ops)
        queue = trace.queue
        if close_at_end:
            promised = in_position_order(queue)
            left = ids(queue.close())
            assert left == promised
            assert await take(queue, 4) == []
            with pytest.raises(RuntimeError):
                queue.put(Job("late", "ann"))
        else:
            left = []
            while len(queue):
                trace.batches.append(await take(queue, 4))
        taken = [job_id for batch in trace.batches for job_id in ids(batch)]
        everything = taken + trace.removed + left
        assert sorted(everything) == sorted(trace.put)
        assert len(set(everything)) == len(everything)
        assert all(len({job.batch_key for job in batch}) == 1 for batch in trace.batches)

    asyncio.run(scenario())


@given(owners=st.lists(st.sampled_from(OWNERS), max_size=40))
def test_with_only_arrivals_the_order_is_by_round_then_first_arrival(owners: list[str | None]) -> None:
    """An owner's k-th job is in round k; within a round, owners go in order of first arrival."""
    queue: FairQueue[Job] = FairQueue()
    nth: Counter[str | None] = Counter()
    first_seen = {owner: rank for rank, owner in enumerate(dict.fromkeys(owners))}
    keys = {}
    for number, owner in enumerate(owners):
        queue.put(Job(f"j{number}", owner))
        keys[f"j{number}"] = (nth[owner], first_seen[owner])
        nth[owner] += 1
    assert in_position_order(queue) == sorted(keys, key=keys.__getitem__)


# -- examples ------------------------------------------------------------------------------------


async def test_five_jobs_of_one_user_do_not_hold_up_the_others() -> None:
    queue: FairQueue[Job] = FairQueue()
    for number in range(5):
        queue.put(Job(f"ann{number}", "ann"))
    queue.put(Job("bob0", "bob"))
    queue.put(Job("cat0", "cat"))
    assert in_position_order(queue) == ["ann0", "bob0", "cat0", "ann1", "ann2", "ann3", "ann4"]
    assert ids(await take(queue)) == ["ann0"]
    queue.put(Job("bob1", "bob"))  # bob still waits, so his second job is in round 2, ahead of ann's
    assert in_position_order(queue) == ["bob0", "cat0", "ann1", "bob1", "ann2", "ann3", "ann4"]
    assert ids(await take(queue)) == ["bob0"]
    assert ids(await take(queue)) == ["cat0"]
    queue.put(Job("cat1", "cat"))  # cat had left the rotation: back of the line, behind ann and bob
    assert in_position_order(queue) == ["ann1", "bob1", "cat1", "ann2", "ann3", "ann4"]


async def test_a_batch_mixes_owners_in_fair_order_and_keeps_to_one_key() -> None:
    queue: FairQueue[Job] = FairQueue()
    for job in [Job("a1", "ann"), Job("a2", "ann"), Job("a3", "ann"), Job("b1", "bob"), Job("c1", "cat", "n"),
                Job("d1", "dan")]:
        queue.put(job)
    assert in_position_order(queue) == ["a1", "b1", "c1", "d1", "a2", "a3"]
    assert ids(await take(queue, 3)) == ["a1", "b1", "d1"]
    # cat was passed over for another model: she keeps the front; the served owners go to the back
    assert in_position_order(queue) == ["c1", "a2", "a3"]
    assert ids(await take(queue, 3)) == ["c1"]
    assert ids(await take(queue, 3)) == ["a2", "a3"]


async def test_anonymous_jobs_share_one_lane() -> None:
    queue: FairQueue[Job] = FairQueue()
    for job in [Job("x1", None), Job("x2", None), Job("x3", None), Job("a1", "ann")]:
        queue.put(job)
    assert in_position_order(queue) == ["x1", "a1", "x2", "x3"]


async def test_remove_renumbers_and_an_emptied_lane_loses_its_place() -> None:
    queue: FairQueue[Job] = FairQueue()
    for job in [Job("a1", "ann"), Job("b1", "bob"), Job("a2", "ann")]:
        queue.put(job)
    assert queue.remove("a1") is True
    assert queue.remove("a1") is False
    assert queue.positions() == {"a2": 1, "b1": 2}  # ann still has a job waiting: she keeps her turn
    assert queue.count("ann") == 1
    assert queue.remove("a2") is True
    queue.put(Job("a3", "ann"))
    assert queue.positions() == {"b1": 1, "a3": 2}
    assert len(queue) == 2


async def test_bad_input_is_refused() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    with pytest.raises(ValueError, match="already queued"):
        queue.put(Job("a1", "bob"))
    with pytest.raises(ValueError, match="max_size"):
        await queue.take_batch(0)


# -- the batching window ----------------------------------------------------------------------------


async def test_a_compatible_job_arriving_within_the_window_joins_the_batch() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    taker = asyncio.create_task(queue.take_batch(4, window=0.3))
    await asyncio.sleep(0.05)
    queue.put(Job("b1", "bob"))
    queue.put(Job("c1", "cat", "other-model"))
    assert ids(await asyncio.wait_for(taker, 5)) == ["a1", "b1"]
    assert queue.positions() == {"c1": 1}


async def test_a_job_arriving_after_the_window_waits_for_the_next_batch() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    taker = asyncio.create_task(queue.take_batch(4, window=0.05))
    await asyncio.sleep(0.3)
    queue.put(Job("b1", "bob"))
    assert ids(await asyncio.wait_for(taker, 5)) == ["a1"]
    assert queue.positions() == {"b1": 1}


async def test_the_window_is_skipped_when_the_batch_is_already_full() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    queue.put(Job("b1", "bob"))
    assert ids(await asyncio.wait_for(queue.take_batch(2, window=60), 1)) == ["a1", "b1"]


async def test_the_window_ends_as_soon_as_the_batch_fills() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    taker = asyncio.create_task(queue.take_batch(2, window=60))
    await asyncio.sleep(0.02)
    assert not taker.done()
    queue.put(Job("b1", "bob"))
    assert ids(await asyncio.wait_for(taker, 1)) == ["a1", "b1"]


async def test_jobs_for_another_model_do_not_count_towards_a_full_batch() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    queue.put(Job("b1", "bob", "other-model"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert ids(await take(queue, 2, window=0.2)) == ["a1"]
    assert loop.time() - began >= 0.19


async def test_if_every_job_is_cancelled_during_the_window_the_taker_waits_for_the_next() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    taker = asyncio.create_task(queue.take_batch(2, window=0.1))
    await asyncio.sleep(0.02)
    queue.remove("a1")
    await asyncio.sleep(0.2)
    assert not taker.done()
    queue.put(Job("b1", "bob"))
    assert ids(await asyncio.wait_for(taker, 5)) == ["b1"]


async def test_close_wakes_a_waiting_taker() -> None:
    queue: FairQueue[Job] = FairQueue()
    taker = asyncio.create_task(queue.take_batch(1))
    await asyncio.sleep(0.02)
    assert not taker.done()
    assert queue.close() == []
    assert await asyncio.wait_for(taker, 1) == []


async def test_close_during_the_window_returns_the_waiting_jobs_and_the_taker_gets_nothing() -> None:
    queue: FairQueue[Job] = FairQueue()
    queue.put(Job("a1", "ann"))
    queue.put(Job("a2", "ann"))
    queue.put(Job("b1", "bob"))
    taker = asyncio.create_task(queue.take_batch(8, window=60))
    await asyncio.sleep(0.02)
    assert ids(queue.close()) == ["a1", "b1", "a2"]
    assert await asyncio.wait_for(taker, 1) == []
    assert len(queue) == 0 and queue.closed


# -- with the real engine ---------------------------------------------------------------------------


class InstantBackend:
    """Returns silence at once and records the order in which prompts start."""

    sample_rate = 32000
    max_duration = 30.0

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.loaded = False
        self.started: list[str] = []

    def load(self) -> None:
        self.loaded = True

    def generate(self, tasks: Sequence[GenerationTask], listener: BatchListener, join: Join | None = None) -> None:
        """Each job ends at once; then the jobs the join check hands out, until it has none."""
        pending = list(tasks)
        while pending:
            for task in pending:
                self.started.append(task.prompt)
                listener.finished(task.job_id, np.zeros((1, int(task.duration * self.sample_rate)), np.float32))
            pending = join(1) if join is not None else []

    def free_memory(self) -> None:
        pass


async def test_the_engine_starts_three_users_jobs_round_robin() -> None:
    backends: dict[str, InstantBackend] = {}

    def factory(model_id: str) -> InstantBackend:
        return backends.setdefault(model_id, InstantBackend(model_id))

    fair: FairQueue[Any] = FairQueue()
    settings_ = EngineSettings(device="cpu", max_batch=1, batch_window=0.0)  # type: ignore[call-arg]
    async with Engine(settings_, backend_factory=factory, queue=fair) as engine:
        handles = [
            engine.submit(JobRequest.create(
                prompt=f"{owner} {n}", model="fake-model", duration=1.0, owner=owner, format="wav",
                normalization="none",
            ))
            for owner in ("ann", "bob", "cat")
            for n in range(3)
        ]
        expected = [f"{owner} {n}" for n in range(3) for owner in ("ann", "bob", "cat")]
        prompts = {handle.id: handle.request.prompt for handle in handles}
        positions = fair.positions()
        assert [prompts[job_id] for job_id in sorted(positions, key=positions.__getitem__)] == expected
        await asyncio.wait_for(asyncio.gather(*(handle.result() for handle in handles)), 30)
    assert backends["fake-model"].started == expected
