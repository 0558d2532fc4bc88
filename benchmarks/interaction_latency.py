"""Interaction latency under load: how fast the bot acknowledges commands while the worker generates.

Run from the repository root:

    .venv/bin/python benchmarks/interaction_latency.py               # musicgen-small architecture, ~40 s
    .venv/bin/python benchmarks/interaction_latency.py --no-limits   # per-user limits raised: all deferrals
    .venv/bin/python benchmarks/interaction_latency.py --scale tiny  # the tiny model, ~20 s

The real bot (``bot.app.JamBot`` and discord.py, unmodified) runs against the fake Discord
of ``tests/fakes`` in this process, on a random-weight checkpoint written to a temporary
directory, on the CPU. First a few users start some long jobs (``--seed-jobs`` x
``--seed-seconds``) and the benchmark waits until the worker is generating them; then
``--users`` users send ``--commands`` /generate each through the fake gateway, in random
order, spread over ``--spread`` seconds and all in flight together.

Latency is the time from the fake sending INTERACTION_CREATE (``FakeInteraction.created_at``,
taken just before the frame goes out) to the bot's interaction callback reaching the fake
(``CallbackRecord.at``); both are ``time.monotonic()`` in this process. A deferral (callback
type 5) and a refusal by the per-user limits (an immediate ephemeral reply, type 4) both
acknowledge the interaction; they are counted separately. The fake server shares the event
loop with the bot, so the latency includes the fake's own work (HTTP parsing, OpenAPI
validation, websocket frames).

The event loop's largest stall is the largest overshoot of a 10 ms ``asyncio.sleep`` in a
monitor task on that same loop, over the ticks during which a job was generating. To help
explain a stall, it also prints the longest garbage collection during the burst, the CPU this
process and every other process used meanwhile (other processes compete with the generation
thread and the loop on a small machine), and with ``--debug-loop MS`` asyncio's own report of
every callback slower than MS ms (debug mode slows the loop: its latencies are not comparable).

Goals (from the issue): p99 < 250 ms, 100% acknowledged, largest loop stall < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import DEFERRED, REPLIED, capture_log, latency_table, ms, nearest_rank, refusal_reasons, show_log
from benchmarks.machine import describe_machine
from generation.backends.checkpoints import write_random_checkpoint
from generation.events import JobState
from tests.bot_harness import World, make_world, running_bot
from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeUser

P99_GOAL_MS = 250.0
STALL_GOAL_MS = 100.0
TICK = 0.01
PROMPTS = [
    "lofi beat with soft piano", "crazy EDM, heavy bang", "80s driving pop with synth pads",
    "epic orchestral film score with choir", "acoustic folk guitar by a campfire",
    "jazz trio late at night, brushed drums", "reggae dub with deep bass and echo",
]
SHIPPED = "as shipped: 2 active, 5 per 10 min, queue cap 100"
NO_LIMITS = {"user_max_jobs": 50, "user_rate_count": 1000, "queue_cap": 10000}


@dataclass
class StallMonitor:
    """Sleeps ``TICK`` in a loop on the running event loop; keeps the largest overshoot while generating."""

    generating: Callable[[], bool]
    worst: float = 0.0
    worst_at: float = 0.0
    worst_any: float = 0.0  # over every tick, generating or not
    ticks: int = 0
    ticks_generating: int = 0
    started: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        while not self._stop.is_set():
            before, busy = loop.time(), self.generating()
            await asyncio.sleep(TICK)
            after = loop.time()
            overshoot = max(0.0, after - before - TICK)
            self.ticks += 1
            self.worst_any = max(self.worst_any, overshoot)
            if busy or self.generating():
                self.ticks_generating += 1
                if overshoot > self.worst:
                    self.worst, self.worst_at = overshoot, before - self.started

    def stop(self) -> None:
        self._stop.set()


class GcPauses:
    """The longest garbage collection (any generation) while installed: a pause the event loop feels."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.generation = -1
        self.count = 0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.count += 1
        took = time.perf_counter() - self._began
        if took > self.longest:
            self.longest, self.generation = took, info["generation"]

    @contextlib.contextmanager
    def installed(self) -> Iterator[GcPauses]:
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)


@dataclass
class Sent:
    interaction: FakeInteraction
    returned_at: float  # when send_command returned: the frame had been written


class CpuMeter:
    """Cores this process, and every other process on the machine (Linux /proc/stat), used between start and stop."""

    def __init__(self) -> None:
        self.own = 0.0
        self.others: float | None = None
        self._began = (time.perf_counter(), time.process_time(), machine_busy())

    def stop(self) -> None:
        wall, own, busy = (now - then if now is not None and then is not None else None
                           for now, then in zip((time.perf_counter(), time.process_time(), machine_busy()),
                                                self._began, strict=True))
        assert wall is not None and own is not None
        self.own = own / wall
        self.others = None if busy is None else max(0.0, busy / wall - self.own)


@dataclass
class Outcome:
    sent: list[Sent]
    monitor: StallMonitor
    gc_pauses: GcPauses
    cpu: CpuMeter  # over the burst
    ready_s: float  # bot start to model loaded
    running: tuple[int, int]  # jobs generating when the burst began, and at its last acknowledgement
    progress: tuple[str, str]  # the first seeding job's status line before and after the burst
    left: tuple[int, int]  # jobs and tickets after the bot closed
    validation_errors: list[str]

    @property
    def window(self) -> float:
        """Seconds from the first INTERACTION_CREATE to the last acknowledgement."""
        first = min(item.interaction.created_at for item in self.sent)
        return max((item.interaction.callback.at for item in self.sent if item.interaction.callback),
                   default=first) - first


def add_members(fake: FakeDiscord, guild: Any, prefix: str, count: int) -> list[FakeUser]:
    users = [fake.add_user(f"{prefix}{index}") for index in range(count)]
    for user in users:
        guild.add_member(user)
    return users


def running(bot: Any) -> int:
    return sum(job.state is JobState.RUNNING for job in bot.engine.jobs())


def shown_progress(interaction: FakeInteraction) -> str:
    """The percentage the bot last showed in a job's status message ("?" before the first one)."""
    content = interaction.original.content if interaction.original is not None else ""
    found = re.findall(r"(\d+)%", content)
    return f"{found[-1]}%" if found else "?"


def machine_busy() -> float | None:
    """CPU seconds every process on the machine has used so far (Linux /proc/stat), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


async def start_generating(args: argparse.Namespace, fake: FakeDiscord, world: World, bot: Any,
                           seeders: list[FakeUser]) -> list[FakeInteraction]:
    """Long jobs through /generate (2 per seeding user, the shipped limit); returns once the worker runs them."""
    seeds = []
    for index in range(args.seed_jobs):
        options = {"prompt": PROMPTS[index % len(PROMPTS)], "duration": args.seed_seconds, "seed": index}
        seeds.append(await fake.send_command("generate", options, user=seeders[index // 2], guild=world.guild,
                                             channel=world.jam))
    callbacks = await asyncio.gather(*(seed.wait_callback(timeout=10) for seed in seeds))
    if any(callback.type != DEFERRED for callback in callbacks):
        raise RuntimeError(f"a seeding job was refused: {[c.data for c in callbacks if c.type != DEFERRED]}")
    await fake.wait_for(lambda: running(bot) > 0, timeout=60)
    await asyncio.sleep(args.settle)  # into the steady state of the batch
    return seeds


async def burst(args: argparse.Namespace, fake: FakeDiscord, world: World, users: list[FakeUser]) -> list[Sent]:
    """Every user's commands in random order, spread over ``args.spread`` s, all in flight together."""
    rng = random.Random(args.seed)
    schedule = [user for user in users for _ in range(args.commands)]
    rng.shuffle(schedule)
    offsets = sorted(rng.uniform(0, args.spread) for _ in schedule)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(user: FakeUser, offset: float) -> Sent:
        await asyncio.sleep(max(0.0, start + offset - loop.time()))
        options = {"prompt": rng.choice(PROMPTS), "duration": rng.randint(4, 15)}
        interaction = await fake.send_command("generate", options, user=user, guild=world.guild, channel=world.jam)
        returned_at = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await interaction.wait_callback(timeout=args.ack_timeout)
        return Sent(interaction, returned_at)

    return await asyncio.gather(*(one(user, offset) for user, offset in zip(schedule, offsets, strict=True)))


async def measure(args: argparse.Namespace, model_dir: Path, data_dir: Path) -> Outcome:
    settings: dict[str, Any] = {"edit_interval": 1.5}  # shipped default (the test harness uses 0.3)
    if args.no_limits:
        settings.update(NO_LIMITS)
    engine = {"batch_window": 0.2, "progress_interval": 0.5}  # shipped defaults (the harness uses faster ones)
    async with FakeDiscord() as fake:
        world = make_world(fake)
        seeders = add_members(fake, world.guild, "seeder", math.ceil(args.seed_jobs / 2))
        users = add_members(fake, world.guild, "user", args.users)
        starting = time.perf_counter()
        async with running_bot(fake, model_dir, data_dir, engine=engine, **settings) as bot:
            ready_s = time.perf_counter() - starting
            seeds = await start_generating(args, fake, world, bot, seeders)
            running_at_start, progress_at_start = running(bot), shown_progress(seeds[0])
            loop = asyncio.get_running_loop()
            if args.debug_loop:  # asyncio logs every callback slower than this
                loop.set_debug(True)
                loop.slow_callback_duration = args.debug_loop / 1000
            monitor = StallMonitor(lambda: running(bot) > 0)
            monitor_task = asyncio.create_task(monitor.run(), name="stall-monitor")
            cpu = CpuMeter()
            try:
                with GcPauses().installed() as gc_pauses:
                    sent = await burst(args, fake, world, users)
            finally:
                cpu.stop()
                loop.set_debug(False)
                monitor.stop()
                await monitor_task
            running_at_end = running(bot)
            await fake.wait_for(lambda: shown_progress(seeds[0]) != progress_at_start, timeout=5)
            progress = (progress_at_start, shown_progress(seeds[0]))
        # running_bot closed the bot: every job cancelled or ended, every ticket task awaited
        left = (len(bot.engine.jobs()), len(bot.pipeline.tickets()))
        return Outcome(sent, monitor, gc_pauses, cpu, ready_s, (running_at_start, running_at_end), progress, left,
                       list(fake.validation_errors))


def latency_rows(sent: list[Sent]) -> Iterator[tuple[str, list[float]]]:
    def latency(item: Sent) -> float:
        value = item.interaction.ack_latency
        return math.inf if value is None else value

    yield "all", [latency(item) for item in sent]
    for name, kind in (("deferred (5)", DEFERRED), ("refused (4)", REPLIED)):
        yield name, [latency(item) for item in sent
                     if item.interaction.callback is not None and item.interaction.callback.type == kind]


def report(args: argparse.Namespace, outcome: Outcome, records: list[logging.LogRecord], load_s: float) -> None:
    import torch

    sent = outcome.sent
    acked = [item for item in sent if item.interaction.callback is not None]
    deferred = sum(item.interaction.callback.type == DEFERRED for item in acked if item.interaction.callback)
    refused = sum(item.interaction.callback.type == REPLIED for item in acked if item.interaction.callback)
    other = len(acked) - deferred - refused
    late = sum(bool(item.interaction.rejected_callbacks) for item in sent if item.interaction.callback is None)
    limits = "raised (--no-limits: 50 active, 1000 per 10 min, queue cap 10000)" if args.no_limits else SHIPPED
    print(f"device: cpu ({torch.get_num_threads()} torch threads), scale: {args.scale} (random weights), "
          f"checkpoint written in {load_s:.0f} s, bot ready (model loaded) in {outcome.ready_s:.0f} s")
    print(f"load: {args.users} users x {args.commands} /generate = {len(sent)} interactions over {args.spread:g} s, "
          f"while {outcome.running[0]} jobs ({args.seed_jobs} seeded x {args.seed_seconds} s) were generating")
    print(f"per-user limits: {limits}")
    print(f"acknowledged: {len(acked)}/{len(sent)} ({100 * len(acked) / len(sent):.1f}%): "
          f"{deferred} deferred (type 5), {refused} refused with an ephemeral reply (type 4)"
          + (f", {other} other" if other else "")
          + (f"; {late} answered after Discord's 3 s deadline (rejected)" if late else ""))
    if refused:
        reasons = refusal_reasons(item.interaction for item in sent)
        print("refusals by limit: " + ", ".join(f"{kind} {count}" for kind, count in reasons.items()))
    print("latency INTERACTION_CREATE -> callback, ms (nearest rank; the fake Discord shares the event loop,")
    print("so this includes the fake's own HTTP, validation and websocket work):")
    latency_table(latency_rows(sent), (50, 90, 99))
    frame = max((item.returned_at - item.interaction.created_at for item in sent), default=0.0)
    print(f"  (created_at to the frame written: at most {frame * 1000:.1f} ms; last acknowledgement "
          f"{outcome.window:.2f} s after the first INTERACTION_CREATE)")
    monitor = outcome.monitor
    print(f"event loop largest stall while generating: {monitor.worst * 1000:.1f} ms "
          f"(at {monitor.worst_at:.2f} s; {monitor.ticks_generating}/{monitor.ticks} ticks of {TICK * 1000:.0f} ms "
          f"with a job generating; largest over all ticks {monitor.worst_any * 1000:.1f} ms)")
    pauses = outcome.gc_pauses
    print(f"garbage collections during the burst: {pauses.count}, the longest {pauses.longest * 1000:.1f} ms "
          f"(generation {pauses.generation})")
    print(f"the first seeding job's status showed {outcome.progress[0]} before the burst and "
          f"{outcome.progress[1]} just after")
    others = "" if outcome.cpu.others is None else f", other processes {outcome.cpu.others:.2f}"
    print(f"CPU during the burst: this process {outcome.cpu.own:.2f} cores{others} "
          f"(of {os.cpu_count()}; others compete with generation and the loop)")
    print(f"jobs generating when the last acknowledgement came: {outcome.running[1]}; "
          f"after shutdown: {outcome.left[0]} jobs and {outcome.left[1]} tickets left")
    show_log(records, outcome.validation_errors,
               lambda record: print(f"  {record.levelname} {record.name}: {record.getMessage()[:300]}"))

    p99 = nearest_rank(next(latency_rows(sent))[1], 99)
    print(f"goal p99 < {P99_GOAL_MS:g} ms: {ms(p99)} ms -> {'met' if p99 * 1000 < P99_GOAL_MS else 'missed'}")
    print(f"goal acknowledged 100%: {100 * len(acked) / len(sent):.1f}% -> "
          f"{'met' if len(acked) == len(sent) else 'missed'}")
    stalled = monitor.worst * 1000
    print(f"goal largest loop stall < {STALL_GOAL_MS:g} ms: {stalled:.1f} ms -> "
          f"{'met' if stalled < STALL_GOAL_MS and monitor.ticks_generating else 'missed'}")
    if monitor.ticks_generating < monitor.ticks:
        print(f"note: no job was generating during {monitor.ticks - monitor.ticks_generating} ticks; "
              f"raise --seed-seconds to keep the worker busy through the burst")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("small", "tiny"), default="small",
                        help="model architecture (random weights): small keeps the CPU busy, tiny is quick")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--commands", type=int, default=3, help="/generate per user")
    parser.add_argument("--spread", type=float, default=5.0, help="seconds over which the commands arrive")
    parser.add_argument("--no-limits", action="store_true",
                        help="raise the per-user limits and the queue cap so that every command is deferred")
    parser.add_argument("--seed-jobs", type=int, default=8, help="jobs generating before the burst")
    parser.add_argument("--seed-seconds", type=int, default=None,
                        help="audio seconds per seeding job (default: 10 for small, 30 for tiny)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of generation before the burst")
    parser.add_argument("--ack-timeout", type=float, default=10.0, help="seconds to wait for each callback")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the schedule")
    parser.add_argument("--debug-loop", type=float, default=None, metavar="MS",
                        help="asyncio debug mode during the burst: log (and list) callbacks slower than MS ms; "
                             "it slows the loop, so latencies are not comparable")
    args = parser.parse_args()
    print(describe_machine())
    if args.seed_seconds is None:
        args.seed_seconds = 10 if args.scale == "small" else 30

    records = capture_log()  # printed in the report, not as they come
    with tempfile.TemporaryDirectory(prefix="jamgen-latency-") as tmp:
        began = time.perf_counter()
        model_dir = write_random_checkpoint(Path(tmp) / f"musicgen-{args.scale}-random", scale=args.scale)
        written = time.perf_counter() - began
        outcome = asyncio.run(measure(args, model_dir, Path(tmp) / "data"))
    report(args, outcome, records.records, written)


if __name__ == "__main__":
    main()
