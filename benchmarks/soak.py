"""Soak: many users in many guilds, every job accounted for from what the users saw.

Run from the repository root:

    .venv/bin/python benchmarks/soak.py                   # shipped limits: the queue cap refuses some
    .venv/bin/python benchmarks/soak.py --queue-cap 1000  # every command can be accepted

The real bot (``bot.app.JamBot`` and discord.py, unmodified) runs against the fake Discord of
``tests/fakes`` in this process, on a tiny random-weight checkpoint written to a temporary
directory, on the CPU, with the shipped settings (per-user limits 2 active and 5 per 10 min,
queue cap 100, edit interval 1.5 s, batch window 0.2 s, batches of 8) unless an option says
otherwise. ``--guilds`` guilds each get one channel and ``--members`` members; every member
sends ``--requests`` /generate (``--min-seconds``..``--max-seconds`` of audio, varied prompts
and seeds), in random order, spread over ``--spread`` seconds and all in flight together.

Acknowledgement: a deferral (callback type 5) is "accepted"; an immediate ephemeral reply
(type 4) is a "refusal" (the per-user limits or the queue cap), listed by reason. Latency is
the fake's ``FakeInteraction.ack_latency``: INTERACTION_CREATE sent -> callback received.

Accounting uses only what the fake Discord recorded, i.e. what the users saw. An accepted
interaction's jobs are the `` `id` `` lines of its status message. A job is delivered when a
message with an attachment whose embed footer says ``job <id>`` answers it (a follow-up of
that interaction, or a channel post mentioning its user); it failed visibly when its status
line shows ❌ (or the bot told the user in the channel that it failed). An accepted
interaction neither delivered nor failed with a message by ``--timeout`` is lost. A job id
posted more than once is a duplicate. After the bot stops, the journal's counts (what
``jamgen stats`` shows) are printed beside them.

Goals (from the issue): lost == 0, duplicates == 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import re
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import DEFERRED, REPLIED, capture_log, latency_table, ms, nearest_rank, refusal_reasons, show_log
from benchmarks.machine import describe_machine
from generation.backends.checkpoints import write_random_checkpoint
from jamgen.stats import collect
from tests.bot_harness import running_bot
from tests.fakes.discord import FakeDiscord, FakeGuild, FakeInteraction, FakeMessage, FakeUser

STYLES = [
    "lofi beat with soft piano", "crazy EDM, heavy bang", "80s driving pop with synth pads",
    "epic orchestral film score with choir", "acoustic folk guitar by a campfire",
    "jazz trio late at night, brushed drums", "reggae dub with deep bass and echo",
    "chiptune boss battle", "ambient drone with field recordings", "funk bassline and clavinet",
]
MOODS = ["", "sad ", "happy ", "dark ", "dreamy ", "fast ", "slow ", "minimal "]
JOB_LINE = re.compile(r"^`([0-9a-f]{6,32})` (.*)$", re.MULTILINE)
FOOTER_JOB = re.compile(r"\bjob ([0-9a-f]{6,32})\b")
DURATION = re.compile(r"([0-9.]+)\s*s")
POLL = 0.5


def rss_kib() -> int | None:
    """The process's resident set now (VmRSS, KiB), or None off Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.0f} MiB"


@dataclass
class Sent:
    user: FakeUser
    guild: FakeGuild
    duration: int
    interaction: FakeInteraction | None = None
    error: str | None = None  # send_command itself failed

    @property
    def callback_type(self) -> int | None:
        callback = self.interaction.callback if self.interaction is not None else None
        return None if callback is None else callback.type


@dataclass
class JobView:
    """One job as its user saw it."""

    job_id: str
    line: str
    posts: list[FakeMessage] = field(default_factory=list)  # posts of it that answer its interaction
    told_failed: bool = False  # a channel message said it failed

    @property
    def outcome(self) -> str:
        if self.posts:
            return "delivered"
        if self.line.startswith("❌") or self.told_failed:
            return "failed"
        if self.line.startswith("🚫"):
            return "cancelled"
        return "pending"


@dataclass
class Accounting:
    accepted: int = 0
    delivered: int = 0
    failed: int = 0
    cancelled: int = 0  # nobody cancels in this run: counted as lost
    pending: list[Sent] = field(default_factory=list)  # accepted, neither delivered nor failed with a message
    jobs: int = 0  # job ids the users saw (status lines)
    delivered_jobs: int = 0  # of those, posted
    failed_jobs: int = 0  # of those, failed with a message
    failed_unqueued: int = 0  # accepted interactions that failed before any job was queued ("❌ why", no job line)
    audio_seconds: float = 0.0
    last_post_at: float = 0.0
    duplicates: dict[str, int] = field(default_factory=dict)  # job id -> times posted
    foreign_posts: list[FakeMessage] = field(default_factory=list)  # posts answering no accepted interaction
    failure_lines: dict[str, int] = field(default_factory=dict)
    pending_lines: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.accepted - self.delivered - self.failed


def posts_by_job(fake: FakeDiscord) -> dict[str, list[FakeMessage]]:
    """Every message with audio, by the job id in its embed footer."""
    found: dict[str, list[FakeMessage]] = {}
    for message in fake.messages:
        if not message.attachments or message.deleted:
            continue
        for embed in message.embeds:
            match = FOOTER_JOB.search(str((embed.get("footer") or {}).get("text", "")))
            if match:
                found.setdefault(match.group(1), []).append(message)
                break
        else:
            found.setdefault("?", []).append(message)
    return found


def post_seconds(message: FakeMessage, fallback: float) -> float:
    for embed in message.embeds:
        for item in embed.get("fields") or []:
            if item.get("name") == "Duration":
                match = DURATION.search(str(item.get("value", "")))
                if match:
                    return float(match.group(1))
    return fallback


def posted_at(message: FakeMessage) -> float:
    """When the fake created the message (epoch seconds, from its ISO timestamp)."""
    return datetime.fromisoformat(message.timestamp).timestamp()


def answers(message: FakeMessage, item: Sent) -> bool:
    """A follow-up of the item's interaction, or a channel post there mentioning its user."""
    assert item.interaction is not None
    if message.interaction_id == item.interaction.id:
        return True
    return (message.via == "channel" and message.channel_id == item.interaction.channel_id
            and f"<@{item.user.id}>" in message.content)


def account(fake: FakeDiscord, sent: Sequence[Sent]) -> Accounting:
    result = Accounting()
    posts = posts_by_job(fake)
    told = [m for m in fake.messages if m.via == "channel" and not m.attachments and "failed" in m.content]
    claimed: set[int] = set()
    for item in sent:
        if item.callback_type != DEFERRED or item.interaction is None:
            continue
        result.accepted += 1
        status = item.interaction.original.content if item.interaction.original is not None else ""
        views = [JobView(job_id, line) for job_id, line in JOB_LINE.findall(status)]
        for view in views:
            view.posts = [m for m in posts.get(view.job_id, []) if answers(m, item)]
            claimed.update(id(m) for m in view.posts)
            view.told_failed = any(f"`{view.job_id}`" in m.content and f"<@{item.user.id}>" in m.content
                                   for m in told)
        result.jobs += len(views)
        result.delivered_jobs += sum(view.outcome == "delivered" for view in views)
        outcomes = {view.outcome for view in views}
        if not views:  # deferred, but no job line: "❌ <why>" when launching failed, else still pending
            outcome = "failed" if "❌" in status else "pending"
        elif outcomes == {"delivered"}:
            outcome = "delivered"
        elif "pending" in outcomes:
            outcome = "pending"
        elif "failed" in outcomes:
            outcome = "failed"
        else:
            outcome = "cancelled"
        if outcome == "delivered":
            result.delivered += 1
            for view in views:
                result.audio_seconds += post_seconds(view.posts[0], item.duration)
                result.last_post_at = max(result.last_post_at, *(posted_at(m) for m in view.posts))
        elif outcome == "failed":
            result.failed += 1
            for view in views:
                if view.outcome == "failed":
                    key = view.line[:80] if view.line else "told in the channel"
                    result.failure_lines[key] = result.failure_lines.get(key, 0) + 1
            if not views:
                result.failed_unqueued += 1
                key = f"(no job queued) {status[:80]}"
                result.failure_lines[key] = result.failure_lines.get(key, 0) + 1
            result.failed_jobs += sum(view.outcome == "failed" for view in views)
        else:
            if outcome == "cancelled":
                result.cancelled += 1
            result.pending.append(item)
            key = re.sub(r"[0-9]+", "N", (views[0].line if views else status or "(no status message)")[:60])
            result.pending_lines[key] = result.pending_lines.get(key, 0) + 1
    for job_id, messages in posts.items():
        if job_id != "?" and len(messages) > 1:
            result.duplicates[job_id] = len(messages)
        result.foreign_posts += [m for m in messages if id(m) not in claimed]
    return result


@dataclass
class Outcome:
    sent: list[Sent]
    accounting: Accounting
    journal: dict[str, int]
    audio_files: tuple[int, int]  # files kept, bytes
    ready_s: float
    first_sent: float  # epoch seconds of the first INTERACTION_CREATE
    wall_s: float  # first INTERACTION_CREATE to the end of the wait
    close_s: float
    left: tuple[int, int]  # jobs and tickets after the bot closed
    timed_out: bool
    validation_errors: list[str]
    rss: dict[str, int | None]


def add_world(fake: FakeDiscord, guilds: int, members: int) -> list[tuple[FakeGuild, Any, list[FakeUser]]]:
    world = []
    for g in range(guilds):
        guild = fake.add_guild(f"soak guild {g}")
        channel = guild.add_channel("jam")
        users = [fake.add_user(f"g{g}-user{index}") for index in range(members)]
        for user in users:
            guild.add_member(user)
        world.append((guild, channel, users))
    return world


async def burst(args: argparse.Namespace, fake: FakeDiscord,
                world: list[tuple[FakeGuild, Any, list[FakeUser]]]) -> list[Sent]:
    rng = random.Random(args.seed)
    schedule = [(guild, channel, user) for guild, channel, users in world for user in users
                for _ in range(args.requests)]
    rng.shuffle(schedule)
    offsets = sorted(rng.uniform(0, args.spread) for _ in schedule)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(guild: FakeGuild, channel: Any, user: FakeUser, offset: float, index: int) -> Sent:
        duration = rng.randint(args.min_seconds, args.max_seconds)
        options = {"prompt": f"{rng.choice(MOODS)}{rng.choice(STYLES)} #{index}", "duration": duration,
                   "seed": rng.randrange(1_000_000)}
        item = Sent(user, guild, duration)
        await asyncio.sleep(max(0.0, start + offset - loop.time()))
        try:
            item.interaction = await fake.send_command("generate", options, user=user, guild=guild, channel=channel)
        except Exception as exc:  # reported, not raised: the other users go on
            item.error = f"{type(exc).__name__}: {exc}"[:200]
            return item
        with contextlib.suppress(TimeoutError):
            await item.interaction.wait_callback(timeout=args.ack_timeout)
        return item

    return await asyncio.gather(*(one(guild, channel, user, offset, index)
                                  for index, ((guild, channel, user), offset) in enumerate(zip(schedule, offsets,
                                                                                               strict=True))))


def idle(bot: Any) -> bool:
    """No job in the engine and no ticket in the pipeline (both public accessors)."""
    return not bot.engine.jobs() and not bot.pipeline.tickets()


async def wait_done(args: argparse.Namespace, fake: FakeDiscord, bot: Any, sent: list[Sent],
                    deadline: float) -> bool:
    """Until every accepted interaction is resolved as the users see it; False on ``--timeout``.

    Also stops once the bot has been idle (no job, no ticket) for ``--idle-grace`` s: whatever is
    unresolved then never will be, and counts as lost."""
    idle_since: float | None = None
    next_note = time.monotonic() + args.progress
    while True:
        now = time.monotonic()
        tally = account(fake, sent)
        if not tally.pending:
            return True
        if idle(bot):
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= args.idle_grace:
                return True
        else:
            idle_since = None
        if now >= deadline:
            return False
        if now >= next_note:
            next_note = now + args.progress
            print(f"  [{now - sent_started(sent):6.1f} s] accepted {tally.accepted}, delivered {tally.delivered}, "
                  f"failed {tally.failed}, pending {len(tally.pending)}; engine jobs {len(bot.engine.jobs())}; "
                  f"RSS {mib(rss_kib())}", file=sys.stderr, flush=True)
        await asyncio.sleep(POLL)


def sent_started(sent: Sequence[Sent]) -> float:
    return min((item.interaction.created_at for item in sent if item.interaction is not None), default=0.0)


async def measure(args: argparse.Namespace, model_dir: Path, data_dir: Path, rss: dict[str, int | None]) -> Outcome:
    settings: dict[str, Any] = {"edit_interval": 1.5, "shutdown_grace": args.shutdown_grace}  # shipped interval
    if args.queue_cap is not None:
        settings["queue_cap"] = args.queue_cap
    engine = {"batch_window": 0.2, "progress_interval": 0.5, "max_batch": args.max_batch}  # shipped defaults
    async with FakeDiscord() as fake:
        world = add_world(fake, args.guilds, args.members)
        starting = time.perf_counter()
        async with running_bot(fake, model_dir, data_dir, engine=engine, **settings) as bot:
            ready_s = time.perf_counter() - starting
            rss["ready"] = rss_kib()
            deadline = time.monotonic() + args.timeout
            sent = await burst(args, fake, world)
            first = sent_started(sent)
            first_epoch = time.time() - (time.monotonic() - first)
            print(f"  burst sent: {sum(i.callback_type == DEFERRED for i in sent)} accepted; waiting for the jobs",
                  file=sys.stderr, flush=True)
            finished = await wait_done(args, fake, bot, sent, deadline)
            wall_s = time.monotonic() - first
            rss["end of run"] = rss_kib()
            closing = time.perf_counter()
        close_s = time.perf_counter() - closing
        # running_bot closed the bot: every job cancelled or ended, every ticket task awaited
        left = (len(bot.engine.jobs()), len(bot.pipeline.tickets()))
        await asyncio.sleep(0.2)  # a last edit or post racing the close lands in the fake's record
        accounting = account(fake, sent)
        errors = list(fake.validation_errors)
    journal, files, size = await collect(data_dir)
    rss["after close"] = rss_kib()
    return Outcome(sent, accounting, journal, (files, size), ready_s, first_epoch, wall_s, close_s, left,
                   not finished, errors, rss)


def describe(record: logging.LogRecord) -> None:
    """A log record, with where it came from and the last frames of its exception."""
    print(f"  {record.levelname} {record.name} ({record.module}:{record.lineno}): {record.getMessage()[:300]}")
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        frames = traceback.extract_tb(error.__traceback__)
        where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-4:])
        print(f"    {type(error).__name__}: {str(error)[:300]} (at {where})")


def report(args: argparse.Namespace, outcome: Outcome, records: list[logging.LogRecord], load_s: float) -> bool:
    import torch

    sent, tally = outcome.sent, outcome.accounting
    accepted = [item for item in sent if item.callback_type == DEFERRED]
    refused = [item for item in sent if item.callback_type == REPLIED]
    unacked = [item for item in sent if item.interaction is not None and item.callback_type is None]
    other = [item for item in sent if item.callback_type not in (None, DEFERRED, REPLIED)]
    send_errors = [item for item in sent if item.error is not None]
    late = sum(bool(item.interaction.rejected_callbacks) for item in unacked if item.interaction is not None)
    cap = args.queue_cap if args.queue_cap is not None else "100 (shipped)"
    print(f"device: cpu ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores), scale: tiny "
          f"(random weights), checkpoint written in {load_s:.1f} s, "
          f"bot ready (model loaded) in {outcome.ready_s:.1f} s")
    print(f"load: {args.guilds} guilds x {args.members} members = {args.guilds * args.members} users x "
          f"{args.requests} /generate ({args.min_seconds}-{args.max_seconds} s of audio) = {len(sent)} interactions "
          f"over {args.spread:g} s")
    print(f"settings: per-user limits as shipped (2 active, 5 per 10 min), queue cap {cap}, max batch "
          f"{args.max_batch}, edit interval 1.5 s, batch window 0.2 s")
    print(f"acknowledged: {len(accepted) + len(refused) + len(other)}/{len(sent)}: accepted (deferred, type 5) "
          f"{len(accepted)}, refused (ephemeral reply, type 4) {len(refused)}"
          + (f", other {len(other)}" if other else "")
          + (f", NOT acknowledged {len(unacked)} ({late} answered after the 3 s deadline)" if unacked else "")
          + (f", send failed {len(send_errors)}" if send_errors else ""))
    if refused:
        reasons = refusal_reasons(item.interaction for item in sent)
        print("  refusals by reason: " + ", ".join(f"{kind} {count}" for kind, count in reasons.items()))
    for item in send_errors[:5]:
        print(f"  send failed: {item.error}")

    print(f"outcome (what the users saw): accepted {tally.accepted}, delivered {tally.delivered}, "
          f"failed with a message {tally.failed}, lost {tally.lost}"
          + (f" (of which cancelled {tally.cancelled})" if tally.cancelled else ""))
    if outcome.timed_out:
        print(f"  the wait hit --timeout {args.timeout:g} s: {len(tally.pending)} still pending, counted as lost")
    for line, count in sorted(tally.failure_lines.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  failed x{count}: {line}")
    for line, count in sorted(tally.pending_lines.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  lost x{count}, status showed: {line}")
    for item in tally.pending[:5]:
        assert item.interaction is not None
        original = item.interaction.original
        print(f"  lost: interaction {item.interaction.id} user {item.user.name}: status "
              f"{(original.content if original else None)!r:.160}, follow-ups {len(item.interaction.followups)}")
    print(f"duplicates (job ids posted more than once): {len(tally.duplicates)}"
          + (f" {dict(list(tally.duplicates.items())[:5])}" if tally.duplicates else ""))
    if tally.foreign_posts:
        print(f"  posts with audio that answer no accepted interaction: {len(tally.foreign_posts)}")
    journal = outcome.journal
    states = ("queued", "running", "encoding", "delivering", "delivered", "failed", "cancelled")
    print("journal after the bot stopped (jamgen stats): "
          + ", ".join(f"{state} {journal.get(state, 0)}" for state in states)
          + f", total {sum(journal.values())}; audio kept: {outcome.audio_files[0]} files, "
          f"{outcome.audio_files[1] / 1024 / 1024:.1f} MiB")
    agree = (journal.get("delivered", 0) == tally.delivered_jobs and journal.get("failed", 0) == tally.failed_jobs
             and sum(journal.values()) == tally.jobs)
    print(f"  journal vs users: {'agree' if agree else 'DISAGREE'} (users saw {tally.jobs} job ids: "
          f"{tally.delivered_jobs} delivered, {tally.failed_jobs} failed; plus {tally.failed_unqueued} accepted "
          f"interactions that failed before a job was queued, which the journal never holds)")

    latencies = [math.inf if item.interaction is None or item.interaction.ack_latency is None
                 else item.interaction.ack_latency for item in sent]
    deferred = [item.interaction.ack_latency or 0.0 for item in accepted if item.interaction is not None]
    print("acknowledgement latency INTERACTION_CREATE -> callback, ms (nearest rank; the fake shares the loop):")
    latency_table((("all", latencies), ("accepted (5)", deferred),
                   ("refused (4)", [item.interaction.ack_latency or 0.0 for item in refused
                                    if item.interaction is not None])), (50, 99))

    rss = outcome.rss
    print(f"memory: peak RSS {mib(peak_rss_kib())} (ru_maxrss); RSS at start (modules imported) "
          f"{mib(rss.get('start'))}, "
          f"bot ready {mib(rss.get('ready'))}, end of run {mib(rss.get('end of run'))}, "
          f"after close {mib(rss.get('after close'))}")
    span = (tally.last_post_at - outcome.first_sent) if tally.last_post_at else 0.0
    rate = tally.audio_seconds / span if span > 0 else 0.0
    print(f"wall: {outcome.wall_s:.1f} s from the first INTERACTION_CREATE to the end of the wait; last delivery "
          f"at {span:.1f} s; bot closed in {outcome.close_s:.1f} s, leaving {outcome.left[0]} jobs and "
          f"{outcome.left[1]} tickets")
    print(f"throughput: {tally.audio_seconds:.1f} s of audio delivered in {span:.1f} s = {rate:.2f} audio s per "
          f"wall s")
    show_log(records, outcome.validation_errors, describe)

    p99 = nearest_rank(latencies, 99)
    print(f"p99 acknowledgement latency: {ms(p99)} ms; peak RSS: {mib(peak_rss_kib())}")
    lost_ok, dup_ok = tally.lost == 0, not tally.duplicates
    print(f"goal lost == 0: {tally.lost} -> {'met' if lost_ok else 'missed'}")
    print(f"goal duplicates == 0: {len(tally.duplicates)} -> {'met' if dup_ok else 'missed'}")
    if unacked or send_errors:
        print(f"note: {len(unacked) + len(send_errors)} interactions were never acknowledged (Discord shows "
              f"\"The application did not respond\"); they are not accepted, so not counted in lost")
    return lost_ok and dup_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guilds", type=int, default=5)
    parser.add_argument("--members", type=int, default=40, help="users per guild")
    parser.add_argument("--requests", type=int, default=2, help="/generate per user")
    parser.add_argument("--min-seconds", type=int, default=1, help="shortest requested duration")
    parser.add_argument("--max-seconds", type=int, default=3, help="longest requested duration")
    parser.add_argument("--spread", type=float, default=10.0, help="seconds over which the commands arrive")
    parser.add_argument("--queue-cap", type=int, default=None,
                        help="the global queue cap (default: the shipped 100, which refuses some of a big burst)")
    parser.add_argument("--max-batch", type=int, default=8, help="jobs per batch (shipped: 8)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds from the burst's start to wait for every job; the rest count as lost")
    parser.add_argument("--idle-grace", type=float, default=10.0,
                        help="stop waiting once the bot has had no job and no ticket for this long")
    parser.add_argument("--ack-timeout", type=float, default=30.0, help="seconds to wait for each callback")
    parser.add_argument("--shutdown-grace", type=float, default=5.0, help="the bot's shutdown grace at the end")
    parser.add_argument("--progress", type=float, default=15.0, help="seconds between progress lines on stderr")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the schedule")
    args = parser.parse_args()
    print(describe_machine())
    if not 1 <= args.min_seconds <= args.max_seconds:
        parser.error("need 1 <= --min-seconds <= --max-seconds")

    rss: dict[str, int | None] = {"start": rss_kib()}
    records = capture_log()  # printed in the report, not as they come
    with tempfile.TemporaryDirectory(prefix="jamgen-soak-") as tmp:
        began = time.perf_counter()
        model_dir = write_random_checkpoint(Path(tmp) / "musicgen-tiny-random", scale="tiny")
        written = time.perf_counter() - began
        outcome = asyncio.run(measure(args, model_dir, Path(tmp) / "data", rss))
    return 0 if report(args, outcome, records.records, written) else 1


if __name__ == "__main__":
    sys.exit(main())
