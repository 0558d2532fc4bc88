"""Scale-out on Redis: one ``jamgen worker`` against two on the same job stream, and the queue's overhead per job.

    .venv/bin/python benchmarks/scaleout.py            # tiny model: ~3 minutes on 2 CPU cores

Everything runs on this machine: a private ``redis-server`` (``tests/redis_server.py``: loopback,
a free port, AOF with ``appendfsync always``, as in the tests) and real ``jamgen worker``
processes on a tiny random-weight checkpoint, on the CPU, each with one torch thread
(``OMP_NUM_THREADS=1``), ``JAMGEN_MAX_BATCH`` rows each and otherwise the shipped settings.
This process plays the bots' part through :class:`~generation.redis.RedisJobs`, with limits
that never refuse.

* throughput: the same stream of ``--jobs`` jobs (``--seconds`` of audio each, fixed seeds,
  ``--users`` owners taking turns) is admitted at once, first to 1 worker, then to 2 (fresh
  processes each time). The workers are up (subscribed to the wake channel) and warm (each
  ran a full batch of warm-up jobs) before the clock starts, so model loading is not counted.
  Time: Redis' clock at the first admit -> the last ``finished`` entry on the events stream.
  It prints jobs/s for both and the ratio (goal >= 1.6x on 2 cores).
* queue overhead, enqueue -> a worker takes the job (goal: p99 < 20 ms on loopback). While the
  workers are busy, time in the queue is mostly waiting for a free row, which is capacity, not
  overhead. So the overhead is measured where a row is free when the job arrives:
  - live: after the 2-worker stream, ``--arrivals`` one-second jobs are admitted one at a time,
    ``--gap`` apart, to the 2 warm workers; per job, ``started - created`` from its hash (both
    Redis' clock: the admit script's run -> the take script's run, i.e. the wake-up over
    pub/sub, the worker's event loop, and the take's round trip), split by whether the worker
    that took it was idle or generating other jobs then. A job the worker that took it may not
    have had a free row for (it held ``--max-batch`` others, counted until they ended, a little
    after their rows were freed) is left out, and counted;
  - direct: ``--direct`` jobs admitted one at a time, ``--direct-gap`` apart, to a consumer in
    this process with no model (woken by the same pub/sub channel, takes one job at a time,
    completes it at once): ``started - created`` from the hash, and, on this process' clock,
    the admit call's start -> the take's reply.

  For both it prints Redis' own stalls of 5 ms or more meanwhile (its latency monitor): with
  ``appendfsync always`` an fsync slowed by other I/O on the machine holds up every client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import latency_table, nearest_rank
from benchmarks.machine import describe_machine
from generation.admission import UserLimits
from generation.backends.checkpoints import write_random_checkpoint
from generation.jobs import JobRequest, OutputFormat
from generation.redis import RedisJobs
from generation.redis.records import fields_of, text
from tests.redis_server import RedisServer
from tests.worker_processes import WorkerProcesses

REPO = Path(__file__).resolve().parent.parent
NO_LIMITS = UserLimits(max_active=10**6, rate_count=10**6, rate_window=1.0, queue_cap=10**6)
UP_TIMEOUT = 300.0  # seconds for workers to load the model and subscribe
RUN_TIMEOUT = 1800.0  # seconds for a stream of jobs to finish
DIRECT_MODEL = "bench-no-model"  # the direct phase's jobs: no worker serves this model
PERCENTS = (50, 99)
STALL_MS = 5  # Redis' latency monitor records its stalls of this many ms or more


def workers_of(server: RedisServer, model_dir: Path, log_dir: Path, max_batch: int) -> WorkerProcesses:
    """Worker processes on ``server`` with ``max_batch`` rows, logging to ``log_dir``."""
    return WorkerProcesses(server, model_dir, log_dir, {"JAMGEN_MAX_BATCH": str(max_batch)})


@dataclass(frozen=True)
class Stream:
    """One throughput run: how many workers, the jobs, and admit -> last finished on Redis' clock."""

    workers: int
    jobs: int
    span: float
    per_worker: list[int]

    @property
    def rate(self) -> float:
        return self.jobs / self.span


def request(model: str, index: int, seconds: float, users: int, prompt: str = "tune") -> JobRequest:
    return JobRequest.create(prompt=f"{prompt} {index}", model=model, duration=seconds, owner=f"user{index % users}",
                             format=OutputFormat.WAV, seed=index)


async def server_time(jobs: RedisJobs) -> float:
    seconds, micros = await jobs.client.time()
    return seconds + micros / 1e6


async def last_event(jobs: RedisJobs) -> str:
    entries = await jobs.client.xrevrange(jobs.keys.events, count=1)
    return text(entries[0][0]) if entries else "0-0"


async def wait_finished(jobs: RedisJobs, ids: list[str], after: str, workers: WorkerProcesses | None) -> float:
    """Wait until every job of ``ids`` has an event after ``after``; the last ``finished`` entry's time (s)."""
    wanted, ended = set(ids), 0.0
    deadline = time.monotonic() + RUN_TIMEOUT
    while wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted)} job(s) did not finish within {RUN_TIMEOUT:.0f} s")
        if workers is not None:
            workers.check()
        for event in await jobs.events(after):
            after = event.entry
            if event.job_id not in wanted:
                continue
            if event.kind != "finished":
                raise RuntimeError(f"job {event.job_id} {event.kind}: {event.reason}")
            wanted.discard(event.job_id)
            ended = max(ended, int(event.entry.split("-")[0]) / 1000)
        await asyncio.sleep(0.1)
    return ended


async def hashes(jobs: RedisJobs, ids: list[str]) -> list[dict[str, str]]:
    return [fields_of(await jobs.client.hgetall(jobs.keys.job(job_id))) for job_id in ids]


async def watch_stalls(jobs: RedisJobs) -> None:
    """Have Redis record its own stalls of 5 ms or more (its latency monitor), from now."""
    await jobs.client.config_set("latency-monitor-threshold", STALL_MS)
    await jobs.client.execute_command("LATENCY", "RESET")


async def stalls(jobs: RedisJobs) -> str:
    """Redis' stalls since :func:`watch_stalls`, the longest of each kind: an fsync of the AOF, a slow command..."""
    latest = await jobs.client.execute_command("LATENCY", "LATEST")
    return ", ".join(f"{text(event)} {longest} ms" for event, _, _, longest, *_ in latest or []) or "none"


async def up(jobs: RedisJobs, model: str, workers: WorkerProcesses, count: int) -> float:
    """Wait until ``count`` workers listen on the model's wake channel (loaded, serving); seconds it took."""
    start = time.monotonic()
    while True:
        workers.check()
        [(_, listening)] = await jobs.client.pubsub_numsub(jobs.keys.wake(model))
        if listening >= count:
            return time.monotonic() - start
        if time.monotonic() - start > UP_TIMEOUT:
            raise TimeoutError(f"{listening} of {count} workers up after {UP_TIMEOUT:.0f} s\n{workers.logs()}")
        await asyncio.sleep(0.1)


async def warm(jobs: RedisJobs, model: str, workers: WorkerProcesses, count: int, max_batch: int,
               seconds: float) -> Counter[str]:
    """A full batch per worker (no worker can take more than its rows, so each gets one); jobs per worker."""
    mark = await last_event(jobs)
    ids: list[str] = []
    for index in range(count * max_batch):
        ids += await jobs.admit([request(model, index, seconds, count * max_batch, "warm up")], limits=NO_LIMITS)
    await wait_finished(jobs, ids, mark, workers)
    return Counter(record["worker"] for record in await hashes(jobs, ids))


async def stream(jobs: RedisJobs, model: str, workers: WorkerProcesses, count: int, args: argparse.Namespace) -> Stream:
    mark = await last_event(jobs)
    start = await server_time(jobs)
    ids: list[str] = []
    for index in range(args.jobs):
        ids += await jobs.admit([request(model, index, args.seconds, args.users)], limits=NO_LIMITS)
    ended = await wait_finished(jobs, ids, mark, workers)
    per_worker = Counter(record["worker"] for record in await hashes(jobs, ids))
    return Stream(count, args.jobs, ended - start, sorted(per_worker.values(), reverse=True))


@dataclass(frozen=True)
class Live:
    """The live phase: created -> started per job, split by whether the worker that took it held other jobs then."""

    idle: list[float]  # the taking worker held no other job when this one was created
    busy: list[float]  # it held some (generating or encoding them), fewer than its rows: one was free
    full: int  # jobs left out: the taking worker held as many as its rows then (it may have had none free)
    stalls: str  # Redis' own stalls meanwhile

    @property
    def all(self) -> list[float]:
        return self.idle + self.busy


async def live_overhead(jobs: RedisJobs, model: str, workers: WorkerProcesses, args: argparse.Namespace) -> Live:
    """One-second jobs one at a time, ``args.gap`` apart, to warm workers."""
    mark = await last_event(jobs)
    await watch_stalls(jobs)
    ids: list[str] = []
    for index in range(args.arrivals):
        ids += await jobs.admit([request(model, 10_000 + index, 1.0, args.users, "one")], limits=NO_LIMITS)
        await asyncio.sleep(args.gap)
    await wait_finished(jobs, ids, mark, workers)
    stalled = await stalls(jobs)
    records = await hashes(jobs, ids)
    idle: list[float] = []
    busy: list[float] = []
    full = 0
    for i, job in enumerate(records):
        created = float(job["created"])
        held = sum(  # a job holds its row until it is encoded, a little less than until it ends: this overcounts
            other["worker"] == job["worker"] and float(other["started"]) <= created < float(other["ended"])
            for j, other in enumerate(records) if j != i
        )
        if held >= args.max_batch:
            full += 1
        else:
            (busy if held else idle).append(float(job["started"]) - created)
    return Live(idle, busy, full, stalled)


async def direct_overhead(url: str, count: int, gap: float) -> tuple[list[float], list[float], str]:
    """admit -> take through RedisJobs, no model: created -> started (Redis' clock), admit call -> take reply (here)."""
    producer, consumer = RedisJobs.from_url(url), RedisJobs.from_url(url)
    await producer.setup()
    await watch_stalls(producer)
    asked: dict[str, float] = {}
    taken: dict[str, float] = {}
    wake, done = asyncio.Event(), asyncio.Event()

    async def listen(ready: asyncio.Event) -> None:
        async with consumer.client.pubsub() as pubsub:
            await pubsub.subscribe(consumer.keys.wake(DIRECT_MODEL))
            ready.set()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    wake.set()

    async def consume() -> None:
        while True:
            wake.clear()
            while leases := await consumer.take("bench-consumer", DIRECT_MODEL, 1):
                now = time.perf_counter()
                for lease in leases:
                    taken[lease.job_id] = now
                    await consumer.complete(lease, b"")
                if len(taken) >= count:
                    done.set()
            await wake.wait()

    ready = asyncio.Event()
    tasks = [asyncio.create_task(listen(ready)), asyncio.create_task(consume())]
    try:
        await ready.wait()
        ids: list[str] = []
        for index in range(count):
            before = time.perf_counter()
            [job_id] = await producer.admit([request(DIRECT_MODEL, index, 1.0, 8, "direct")], limits=NO_LIMITS)
            asked[job_id] = before
            ids.append(job_id)
            await asyncio.sleep(gap)
        try:
            await asyncio.wait_for(done.wait(), 30)
        except TimeoutError:
            raise TimeoutError(f"the consumer took {len(taken)} of {count} jobs") from None
        records = await hashes(producer, ids)
        stalled = await stalls(producer)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.aclose()
        await consumer.aclose()
    server = [float(r["started"]) - float(r["created"]) for r in records]
    return server, [taken[job_id] - asked[job_id] for job_id in ids], stalled


async def with_workers(server: RedisServer, model_dir: Path, log_dir: Path, count: int,
                       args: argparse.Namespace) -> tuple[Stream, Live | None]:
    model = str(model_dir)
    jobs = RedisJobs.from_url(server.url)
    await jobs.client.flushall()
    await jobs.setup()
    workers = workers_of(server, model_dir, log_dir / f"{count}-workers", args.max_batch)
    workers.log_dir.mkdir()
    try:
        for _ in range(count):
            workers.start()
        loaded = await up(jobs, model, workers, count)
        warmed = await warm(jobs, model, workers, count, args.max_batch, args.seconds)
        print(f"{count} worker(s): up in {loaded:.1f} s; warm-up jobs per worker: {sorted(warmed.values())}")
        result = await stream(jobs, model, workers, count, args)
        print(f"  {result.jobs} jobs in {result.span:.2f} s: {result.rate:.3f} jobs/s; jobs per worker: "
              f"{result.per_worker}")
        live = await live_overhead(jobs, model, workers, args) if count == 2 else None
    finally:
        workers.stop()
        await jobs.aclose()
    return result, live


async def run(server: RedisServer, model_dir: Path, log_dir: Path, args: argparse.Namespace) -> None:
    direct = await direct_overhead(server.url, args.direct, args.direct_gap)
    one, _ = await with_workers(server, model_dir, log_dir, 1, args)
    two, live = await with_workers(server, model_dir, log_dir, 2, args)
    assert live is not None
    ratio = two.rate / one.rate
    print(f"throughput ({os.cpu_count()} cores): 1 worker {one.rate:.3f} jobs/s, 2 workers {two.rate:.3f} jobs/s, "
          f"ratio {ratio:.2f}x  (goal >= 1.6x on 2 cores: {'met' if ratio >= 1.6 else 'missed'})")
    print("queue overhead per job, enqueue -> taken by a worker with a free row (ms):")
    latency_table([
        ("live", live.all), ("live, idle", live.idle), ("live, busy", live.busy),
        ("direct", direct[0]), ("direct, here", direct[1]),
    ], PERCENTS)
    print(f"  live: {args.arrivals} one-second jobs {args.gap * 1000:.0f} ms apart to 2 warm workers of "
          f"{args.max_batch} rows; created -> started (Redis' clock); idle/busy: the worker that took the job held "
          f"no other job / some but not {args.max_batch} when it was created; {live.full} job(s) left out that "
          "arrived when it held as many jobs as it has rows")
    print(f"  direct: {args.direct} jobs {args.direct_gap * 1000:.0f} ms apart to a consumer in this process, "
          "no model; created -> started (Redis' clock), and here: admit call -> take reply")
    print(f"  Redis' own stalls of {STALL_MS} ms or more (its latency monitor; the longest of each kind): "
          f"live: {live.stalls}; direct: {direct[2]}")
    for name, values in (("live", live.all), ("direct", direct[0])):
        p99 = nearest_rank(values, 99)
        print(f"goal p99 < 20 ms, {name}: {p99 * 1000:.1f} ms -> {'met' if p99 < 0.020 else 'missed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=48, help="jobs in the throughput stream")
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per job of the stream")
    parser.add_argument("--users", type=int, default=6, help="owners taking turns in the stream")
    parser.add_argument("--max-batch", type=int, default=4, help="JAMGEN_MAX_BATCH of each worker")
    parser.add_argument("--arrivals", type=int, default=200, help="jobs of the live overhead phase")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between the live phase's jobs")
    parser.add_argument("--direct", type=int, default=2000, help="jobs of the direct overhead phase")
    parser.add_argument("--direct-gap", type=float, default=0.005, help="seconds between the direct phase's jobs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    print(describe_machine())
    print("load average (1, 5, 15 min) at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "tiny-musicgen", scale="tiny", tokenizer="noop")
        server = RedisServer.launch(Path(tmp) / "redis")
        print(f"tiny random-weight model, CPU; each worker: 1 torch thread, {args.max_batch} rows; redis-server on "
              f"loopback, AOF appendfsync always; stream: {args.jobs} jobs x {args.seconds:g} s of audio, "
              f"{args.users} users")
        try:
            asyncio.run(run(server, model_dir, Path(tmp), args))
        finally:
            with contextlib.suppress(Exception):
                server.stop()
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
