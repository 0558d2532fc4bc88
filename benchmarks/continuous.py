"""Continuous vs static batching: time from request to file on a stream of requests.

    .venv/bin/python benchmarks/continuous.py          # small architecture, 3 runs: ~50 minutes on 2 CPU cores
    .venv/bin/python benchmarks/continuous.py --scale tiny --runs 1   # a quick look

24 requests on the musicgen-small architecture (random weights, CPU): 18 of 2 s and 6
of 8 s, in an order shuffled by a fixed seed, arriving as a Poisson stream (fixed seed)
whose rate keeps the static engine about 70% busy. The static engine's capacity for this
mix is measured first (all 24 requests at once, in jobs per second) and the arrival rate
starts at 70% of it; then it is calibrated: the static engine serves the stream, and the
rate is scaled by 70% / the share of time it was busy, up to ``--calibrate`` times (until
busy is within 5 points of 70%). The capacity alone overstates what a stream can use when
a step's cost grows with its jobs (batches of a stream are smaller than 8, so each job costs
more): with the packed linear form the uncalibrated stream kept static 91% busy.

Each run serves the same stream twice, in fresh processes, with ``JAMGEN_BATCHING=static``
(a batch is closed once it starts) and ``continuous`` (jobs join the running batch between
steps); the order alternates between runs. "Delivered" means the encoded file is ready.
It prints p50, p95 and max time from request to file, and throughput (audio seconds per
wall second from the first request to the last file), per run and the median of the runs.
Goals: p95 at least 1.5x lower and p50 at least 2x lower with continuous batching,
throughput no lower.

Also measured in the same run, to show where the time of the slowest requests goes:

* for the 8 s requests, the median wait (request to start of decoding) and run (start to file);
* per mode, how busy the engine was: the share of the span in which some request was between
  its start of decoding and its file. The arrival rate is set from a capacity measured once,
  before the runs, and this machine's speed drifts (the floor moved from 82 s to 64 s between two
  invocations): static's busy share is the check that a run's stream loaded it as meant (~70%);
* the floor: one 8 s request alone in a fresh engine, request to file. No 8 s request can be
  served faster than that, and p95 of 24 requests is the second slowest, so it is at least
  the floor, whatever the batching. ``static p95 / floor`` is the best p95 ratio this stream
  allows, printed beside the goal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.batching import in_process, offline_tokenizer
from benchmarks.common import nearest_rank
from benchmarks.machine import describe_machine
from generation.backends.checkpoints import write_random_checkpoint
from generation.jobs import JobRequest
from generation.settings import EngineSettings
from generation.worker import Engine

PROMPTS = ["lofi slow bpm electro chill", "crazy EDM, heavy bang", "jazz trio late at night", "epic orchestral score"]
MAX_BATCH = 8
CALIBRATION_TOLERANCE = 0.05  # busy share within this of the target ends the calibration
LONG = 8.0  # seconds of the long requests


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the stream starts
    duration: float
    prompt: str
    seed: int


@dataclass(frozen=True)
class Outcome:
    latencies: list[float]  # request -> file, per request
    span: float  # first request -> last file
    audio: float  # seconds of audio delivered
    long_waits: list[float]  # request -> start of decoding, per 8 s request
    long_runs: list[float]  # start of decoding -> file, per 8 s request
    busy: float  # share of the span in which some request was between start of decoding and its file

    @property
    def throughput(self) -> float:
        return self.audio / self.span


def stream(seed: int, rate: float) -> list[Arrival]:
    """18 requests of 2 s and 6 of 8 s, shuffled, with exponential gaps of mean ``1 / rate``."""
    rng = random.Random(seed)
    durations = [2.0] * 18 + [LONG] * 6
    rng.shuffle(durations)
    at, arrivals = 0.0, []
    for index, duration in enumerate(durations):
        arrivals.append(Arrival(at, duration, PROMPTS[index % len(PROMPTS)], index))
        at += rng.expovariate(rate)
    return arrivals


def busy_share(intervals: list[tuple[float, float]], span: float) -> float:
    """The share of ``span`` covered by the union of ``intervals`` (start of decoding -> file, per request)."""
    covered, reach = 0.0, float("-inf")
    for begin, end in sorted(intervals):
        if end > reach:
            covered += end - max(begin, reach)
            reach = end
    return covered / span


def settings(model_dir: Path, batching: str) -> EngineSettings:
    return EngineSettings(  # type: ignore[call-arg]
        model=str(model_dir), device="cpu", max_batch=MAX_BATCH, batch_window=0.2, batching=batching
    )


def request(model_dir: Path, arrival: Arrival) -> JobRequest:
    return JobRequest.create(prompt=arrival.prompt, duration=arrival.duration, seed=arrival.seed, model=str(model_dir))


async def _warm(engine: Engine, model_dir: Path) -> None:
    await engine.warm_up()
    await engine.submit(request(model_dir, Arrival(0.0, 1.0, "warm up", 0))).result()


def _served(model_dir: Path, batching: str, arrivals: list[Arrival]) -> float:
    """Seconds from submitting ``arrivals`` all at once to their last file, in a fresh warmed engine."""
    warnings.filterwarnings("ignore")
    offline_tokenizer()

    async def run() -> float:
        async with Engine(settings(model_dir, batching)) as engine:
            await _warm(engine, model_dir)
            start = time.monotonic()
            await asyncio.gather(*(engine.submit(request(model_dir, arrival)).result() for arrival in arrivals))
            return time.monotonic() - start

    return asyncio.run(run())


def capacity(model_dir: Path, arrivals: list[Arrival]) -> float:
    """Jobs per second the static engine serves when the whole stream is there at once (a fresh process)."""
    return len(arrivals) / _served(model_dir, "static", arrivals)


def serve(model_dir: Path, batching: str, arrivals: list[Arrival]) -> Outcome:
    """Play the stream into a fresh engine (a fresh process, as in the bot)."""
    warnings.filterwarnings("ignore")
    offline_tokenizer()

    async def run() -> Outcome:
        async with Engine(settings(model_dir, batching)) as engine:
            await _warm(engine, model_dir)

            async def one(arrival: Arrival) -> tuple[float, float, float]:
                await asyncio.sleep(max(0.0, start + arrival.at - time.monotonic()))
                asked = time.monotonic()
                handle = engine.submit(request(model_dir, arrival))
                await handle.result()
                assert handle.started_at is not None
                return time.monotonic() - asked, handle.started_at - asked, asked - start

            start = time.monotonic()
            timings = await asyncio.gather(*(one(arrival) for arrival in arrivals))
            span = time.monotonic() - start
        long = [timing for timing, arrival in zip(timings, arrivals, strict=True) if arrival.duration == LONG]
        busy = busy_share([(at + wait, at + latency) for latency, wait, at in timings], span)
        return Outcome([latency for latency, _, _ in timings], span, sum(arrival.duration for arrival in arrivals),
                       [wait for _, wait, _ in long], [latency - wait for latency, wait, _ in long], busy)

    return asyncio.run(run())


def calibrate(model_dir: Path, seed: int, rate: float, target: float, rounds: int) -> float:
    """The arrival rate at which static batching is about ``target`` busy on the stream, starting from ``rate``."""
    for _ in range(rounds):
        busy = in_process(serve, model_dir, "static", stream(seed, rate)).busy
        print(f"  calibration: {rate:.4f} requests/s keeps static {busy:.0%} busy", flush=True)
        if abs(busy - target) <= CALIBRATION_TOLERANCE:
            break
        rate *= target / busy
    return rate


def floor(model_dir: Path) -> float:
    """Request to file of one 8 s request alone in a fresh engine: no 8 s request of the stream can beat it."""
    return _served(model_dir, "continuous", [Arrival(0.0, LONG, PROMPTS[0], 0)])


def row(name: str, outcome: Outcome) -> str:
    p50, p95 = nearest_rank(outcome.latencies, 50), nearest_rank(outcome.latencies, 95)
    wait, run = statistics.median(outcome.long_waits), statistics.median(outcome.long_runs)
    return (f"  {name:<11} p50 {p50:6.1f} s  p95 {p95:6.1f} s  max {max(outcome.latencies):6.1f} s  "
            f"throughput {outcome.throughput:.3f} audio-s/s  {LONG:g} s requests (medians): wait {wait:5.1f} s, "
            f"run {run:5.1f} s  busy {outcome.busy:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", choices=["tiny", "small"], default="small")
    parser.add_argument("--busy", type=float, default=0.7, help="share of the static engine's capacity to load")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--calibrate", type=int, default=2, help="static runs to set the rate by (0: capacity only)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    offline_tokenizer()
    print(describe_machine())
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "model", scale=args.scale, tokenizer="whitespace")
        cap = in_process(capacity, model_dir, stream(args.seed, rate=1.0))
        print(f"musicgen-{args.scale} architecture, random weights; static capacity {cap:.3f} jobs/s "
              f"(all 24 at once); the stream starts at {args.busy:.0%} of it", flush=True)
        arrivals = stream(args.seed, calibrate(model_dir, args.seed, args.busy * cap, args.busy, args.calibrate))
        print(f"24 requests over {arrivals[-1].at:.0f} s (meant to keep static {args.busy:.0%} busy)", flush=True)
        results: dict[str, list[Outcome]] = {"static": [], "continuous": []}
        floors = []
        for run in range(args.runs):
            order = ["static", "continuous"] if run % 2 == 0 else ["continuous", "static"]
            for batching in order:
                results[batching].append(in_process(serve, model_dir, batching, arrivals))
            floors.append(in_process(floor, model_dir))
            print(f"run {run + 1}:")
            for batching in ("static", "continuous"):
                print(row(batching, results[batching][-1]))
            print(f"  floor: one {LONG:g} s request alone, request to file: {floors[-1]:.1f} s")
    report(results, statistics.median(floors))


def report(results: dict[str, list[Outcome]], floor_s: float) -> None:
    def median(batching: str, measure: str) -> float:
        values = []
        for outcome in results[batching]:
            values.append({
                "p50": nearest_rank(outcome.latencies, 50), "p95": nearest_rank(outcome.latencies, 95),
                "max": max(outcome.latencies), "throughput": outcome.throughput,
            }[measure])
        return statistics.median(values)

    print(f"median of {len(results['static'])} run(s):")
    for measure in ("p50", "p95", "max", "throughput"):
        static, continuous = median("static", measure), median("continuous", measure)
        print(f"  {measure:<10} static {static:7.2f}  continuous {continuous:7.2f}  ratio static/continuous "
              f"{static / continuous:.2f}x")
    p50 = median("static", "p50") / median("continuous", "p50")
    p95 = median("static", "p95") / median("continuous", "p95")
    throughput = median("continuous", "throughput") / median("static", "throughput")
    print(f"goal p50 >= 2x lower: {p50:.2f}x -> {'met' if p50 >= 2 else 'missed'}")
    best = median("static", "p95") / floor_s
    print(f"goal p95 >= 1.5x lower: {p95:.2f}x -> {'met' if p95 >= 1.5 else 'missed'} (the best this stream allows: "
          f"static p95 / floor {floor_s:.1f} s = {best:.2f}x)")
    print(f"goal throughput no lower: {throughput:.2f}x -> {'met' if throughput >= 1 else 'missed'}")


if __name__ == "__main__":
    main()
