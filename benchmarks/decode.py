"""Decode speed and fidelity: stock audiocraft ``generate`` vs jamgen's decode loop in each CPU precision mode.

    .venv/bin/python benchmarks/decode.py                     # 2 s of audio: ~10 minutes on 2 quiet CPU cores
    .venv/bin/python benchmarks/decode.py --seconds 0.5       # a quicker look
    .venv/bin/python benchmarks/decode.py --modes fp32,bf16,int8 --seconds 2   # and bf16: over an hour on AVX2
    .venv/bin/python benchmarks/decode.py --scale tiny --seconds 0.2           # does it run

The musicgen-small architecture (or ``--scale tiny``) with random weights, on the CPU,
built as ``benchmarks/batching.py`` builds it (T5 replaced by an offline look-up table).
Sides, each in its own fresh spawned process that loads its model once and warms it up
(a short generate at each batch size) before anything is timed:

* ``eager``: stock audiocraft, ``set_generation_params(duration=...)`` then ``generate(prompts)``;
* ``fp32``, ``bf16``, ``int8``: jamgen's ``MusicGenBackend(dir, device="cpu", precision=mode)``
  (``linear="auto"``: fp32's linear form is what the load-time measurement picks; printed
  with the padding the plan chose).

Every side generates ``--seconds`` of audio for 1 prompt and for 8 prompts at once, with
stock sampling (top-k 250, temperature 1, guidance 3). The processes stay up and only one
runs at a time: at batch 1 the sides go eager, fp32, bf16, int8, at batch 8 the other way
round, and with ``--repeats`` > 1 each pass reverses the previous one, so that a drift in the
machine's speed falls on every side alike; the fastest run is kept. Printed per side and
batch size: audio-seconds per wall-second, decode steps per wall-second (one step advances
every job of the batch), the speed ratio to eager at the same batch size, and each run's wall.

Then fidelity, on the 8 prompts, for bf16 and int8 against jamgen's fp32 (the loop is
row-invariant, so a job's numbers are the same at any batch size):

* greedy token agreement: temperature 0, same prompts and seeds, each mode decoding on its
  own tokens; the share of equal codes over all codebooks and frames, and the median frame
  at which a job's codes first differ (one different token sends the decode down another path);
* logit error, teacher-forced: fp32 records each step's logits ([2, K, 1, card]: the
  conditioned and the null row) and tokens; the mode then runs with each sampled column
  overwritten by fp32's, so both see the same inputs at every step. Printed: the largest
  |logit - fp32 logit| over all jobs, steps, rows and codebooks relative to the largest
  |fp32 logit|; how often the guided logits' argmax (the greedy pick) is fp32's; and, in
  logit units, the median error of the guided logits beside fp32's median margin between
  its first and second pick (whether the picks that differ are close calls).

Last, the goals: fp32 never slower than eager at either batch size; int8 >= 2x eager at
batch 1 and >= 3x at batch 8; stretch: int8 >= 1 audio-second per wall-second at batch 1.

Time: on this 2-core AMD EPYC (AVX2, no AVX-512), busy, per decode step of musicgen-small, stock
audiocraft takes ~3 s (batch 1 and 8), jamgen fp32 ~2 s, int8 ~0.2 s, and bf16 ~1.5 s at
batch 1 but ~8 s at batch 8 (no native bf16: its matmuls scale with the rows). 2 s of audio
is 103 steps, so the default is 0.5 s (27 steps; per-step ratios barely depend on the
length) and bf16 is left out unless the CPU has native bf16 (avx512_bf16 or amx_bf16) or
``--modes`` names it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.batching import in_process, offline_tokenizer, prompts
from benchmarks.machine import describe_machine
from generation.backends.checkpoints import write_random_checkpoint

T = TypeVar("T")
BATCHES = (1, 8)
MODES = ("fp32", "bf16", "int8")
WARM_SECONDS = 0.1
CFG_COEF = 3.0  # stock audiocraft's guidance, and jamgen's default

# -- in each side's process ------------------------------------------------------------------------

_SIDE: dict[str, Any] = {}  # the side this process runs: its name and its loaded model


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    offline_tokenizer()


def _tasks(count: int, seconds: float, greedy: bool = False) -> list[Any]:
    from generation.backends.base import GenerationTask
    from generation.jobs import SamplingParams

    sampling = SamplingParams(temperature=0.0, cfg_coef=CFG_COEF) if greedy else SamplingParams(cfg_coef=CFG_COEF)
    return [
        GenerationTask(job_id=f"job{index}", prompt=prompt, duration=seconds, seed=index, sampling=sampling)
        for index, prompt in enumerate(prompts(count))
    ]


def _run_jamgen(tasks: list[Any]) -> None:
    from tests.helpers import RecordingListener

    listener = RecordingListener()
    _SIDE["backend"].generate(tasks, listener)
    if listener.errors or len(listener.results) != len(tasks):
        raise RuntimeError(f"jamgen ({_SIDE['name']}): {len(listener.results)}/{len(tasks)} done, {listener.errors}")


def _generate(batch: int, seconds: float) -> None:
    """One stock-sampling generate of ``batch`` prompts on this process's side."""
    import torch

    if _SIDE["name"] == "eager":
        model = _SIDE["model"]
        model.set_generation_params(duration=seconds)
        torch.manual_seed(0)
        model.generate(prompts(batch))
    else:
        _run_jamgen(_tasks(batch, seconds))


def write_checkpoint(directory: Path, scale: str) -> Path:
    """The random checkpoint, written in a process of its own (building it leaves gigabytes on the heap)."""
    _quiet()
    return write_random_checkpoint(directory, scale=scale, tokenizer="whitespace")  # type: ignore[arg-type]


def setup(name: str, model_dir: Path, batches: tuple[int, ...]) -> dict[str, Any]:
    """Load ``name``'s model (once for the process) and warm it up; what the load decided."""
    _quiet()
    import torch

    start = time.perf_counter()
    info: dict[str, Any] = {"threads": torch.get_num_threads()}
    _SIDE["name"] = name
    if name == "eager":
        from audiocraft.models import MusicGen

        _SIDE["model"] = MusicGen.get_pretrained(str(model_dir), device="cpu")
    else:
        from generation.backends.musicgen import MusicGenBackend

        backend = MusicGenBackend(str(model_dir), device="cpu", precision=name, linear="auto")
        backend.load()
        _SIDE["backend"] = backend
        plan = backend._require_decoder().plan
        padding = plan.linear.padding
        info.update(
            form=plan.linear.form, chosen_by=plan.linear.chosen_by, costs=plan.linear.costs,
            padding=f"min {padding.min_rows} rows, multiple of {padding.row_multiple}"
            + (f", stops {list(padding.stops)}" if padding.stops else "")
            + ("" if padding.invariant else " (not row-invariant)"),
            padded_rows={batch: plan.linear.padded_rows(2 * batch) for batch in batches},
            quantised=plan.quantised_fraction, plan_threads=plan.threads,
        )
    info["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        _generate(batch, WARM_SECONDS)
    info["warm_s"] = time.perf_counter() - start
    return info


def timed(batch: int, seconds: float) -> float:
    """Wall seconds of one generate of ``batch`` prompts, ``seconds`` each."""
    start = time.perf_counter()
    _generate(batch, seconds)
    return time.perf_counter() - start


def decode_steps(seconds: float) -> int:
    """The decode steps (forward passes) of a generation of ``seconds``: the same for stock and jamgen."""
    model = _SIDE["model"] if _SIDE["name"] == "eager" else _SIDE["backend"]._require()
    pattern = model.lm.pattern_provider.get_pattern(int(seconds * model.frame_rate))
    return int(pattern.num_sequence_steps - pattern.get_first_step_with_timesteps(0))


@dataclass
class Record:
    """A greedy jamgen run, per job: its codes [K, frames], and (if recorded) each step's logits and tokens."""

    codes: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]  # [steps, 2, K, card]: (cond, null) rows
    tokens: dict[str, np.ndarray]  # [steps, K]: the column each step wrote
    sampled: dict[str, np.ndarray]  # [steps, K]: where the step sampled a code (not a pattern's special token)


def greedy(batch: int, seconds: float, record: bool, force: dict[str, np.ndarray] | None = None) -> Record:
    """Greedy decode of ``batch`` prompts; ``record`` keeps every step's logits; ``force`` (per job, [steps, K])
    overwrites each sampled column with the given tokens (teacher forcing)."""
    import torch

    from generation.backends.decoder import BatchDecoder
    from generation.backends.streams import UNKNOWN_TOKEN, Stream

    decoder = _SIDE["backend"]._require_decoder()
    streams: dict[str, Stream] = {}
    logits_seen: dict[str, list[np.ndarray]] = {}
    tokens_seen: dict[str, list[np.ndarray]] = {}
    sampled_seen: dict[str, list[np.ndarray]] = {}

    def sample(stream: Stream, logits: torch.Tensor) -> None:
        job = stream.job_id
        streams[job] = stream
        if record:
            logits_seen.setdefault(job, []).append(logits[:, :, 0].float().numpy().copy())
        column = stream.sequence[..., stream.step : stream.step + 1]  # a view: it shows what _sample writes
        sampled_seen.setdefault(job, []).append((column == UNKNOWN_TOKEN).reshape(-1).numpy())
        BatchDecoder._sample(stream, logits)
        written = tokens_seen.setdefault(job, [])
        if force is not None:
            column.copy_(torch.from_numpy(force[job][len(written)]).view_as(column))
        written.append(column.reshape(-1).numpy().copy())

    decoder._sample = sample  # type: ignore[method-assign]
    try:
        _run_jamgen(_tasks(batch, seconds, greedy=True))
    finally:
        del decoder._sample
    return Record(
        codes={job: stream.codes()[0].numpy() for job, stream in streams.items()},
        logits={job: np.stack(steps) for job, steps in logits_seen.items()},
        tokens={job: np.stack(steps) for job, steps in tokens_seen.items()},
        sampled={job: np.stack(steps) for job, steps in sampled_seen.items()},
    )


# -- the main process ------------------------------------------------------------------------------


class Side:
    """A fresh spawned process that holds one side's model between calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def call(self, function: Callable[..., T], *args: Any) -> T:
        return self.pool.submit(function, *args).result()

    def close(self) -> None:
        self.pool.shutdown()


@dataclass
class Fidelity:
    agreement: float  # free-running greedy: share of codes equal to fp32's
    first_difference: float  # median over jobs of the first frame whose codes differ (frames if none)
    frames: int
    logit_error: float  # teacher-forced: max |logit - fp32| / max |fp32|
    forced_top1: float  # teacher-forced: share of sampled positions whose guided argmax is fp32's
    guided_error: float  # teacher-forced: median |guided logit - fp32's| at sampled positions (logit units)
    margin: float  # fp32: median gap between its first and second guided logit at sampled positions


def _guided(logits: np.ndarray) -> np.ndarray:
    """Classifier-free guidance as the sampler applies it: [..., 2, K, card] -> [..., K, card]."""
    cond, null = logits[..., 0, :, :], logits[..., 1, :, :]
    return null + (cond - null) * CFG_COEF


def fidelity(reference: Record, free: Record, forced: Record) -> Fidelity:
    jobs = sorted(reference.codes)
    codes = np.stack([reference.codes[job] for job in jobs])  # [J, K, frames]
    equal = codes == np.stack([free.codes[job] for job in jobs])
    frames = codes.shape[-1]
    first = [int(np.argmin(row.all(axis=0))) if not row.all() else frames for row in equal]
    base = np.stack([reference.logits[job] for job in jobs])  # [J, steps, 2, K, card]
    mode = np.stack([forced.logits[job] for job in jobs])
    error = float(np.abs(mode - base).max() / np.abs(base).max())
    sampled = np.stack([reference.sampled[job] for job in jobs])  # [J, steps, K]
    guided, guided_mode = _guided(base)[sampled], _guided(mode)[sampled]  # [positions, card]
    top1 = float((guided.argmax(-1) == guided_mode.argmax(-1)).mean())
    top_two = np.sort(guided, axis=-1)[:, -2:]
    return Fidelity(
        float(equal.mean()), statistics.median(first), frames, error, top1,
        float(np.median(np.abs(guided_mode - guided))), float(np.median(top_two[:, 1] - top_two[:, 0])),
    )


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX); without, jamgen's bf16 is slow."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["tiny", "small"], default="small")
    parser.add_argument("--seconds", type=float, default=2.0, help="audio per prompt (default 2, as the goals)")
    parser.add_argument("--modes", help="jamgen's modes, comma-separated, of fp32,bf16,int8 (default: all three; "
                        "bf16 only where the CPU has native bf16)")
    parser.add_argument("--repeats", type=int, default=1, help="timed generates per side and batch size (default 1)")
    args = parser.parse_args()
    skipped = ""
    if args.modes is None:
        args.modes = ",".join(mode for mode in MODES if mode != "bf16" or native_bf16())
        if "bf16" not in args.modes:
            skipped = " (bf16 left out: no native bf16 on this CPU; --modes fp32,bf16,int8 to add it)"
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or any(mode not in MODES for mode in modes):
        parser.error(f"--modes takes some of {', '.join(MODES)}")
    if args.repeats < 1 or args.seconds <= 0:
        parser.error("--repeats must be >= 1 and --seconds > 0")
    _quiet()
    print(describe_machine())
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = in_process(write_checkpoint, Path(tmp) / "model", args.scale)
        print(f"musicgen-{args.scale} architecture, random weights, CPU; {args.seconds:g} s of audio per prompt, "
              f"batches {', '.join(map(str, BATCHES))}; {args.repeats} timed run(s) per side and batch size; "
              f"modes {', '.join(modes)}{skipped}")
        sides = [Side(name) for name in ("eager", *modes)]
        try:
            run(sides, model_dir, args.seconds, args.repeats)
        finally:
            for side in sides:
                side.close()
    print(f"(the benchmark took {time.perf_counter() - began:.0f} s)")


def run(sides: list[Side], model_dir: Path, seconds: float, repeats: int) -> None:
    by_name = {side.name: side for side in sides}
    for side in sides:
        info = side.call(setup, side.name, model_dir, BATCHES)
        line = f"{side.name}: loaded in {info['load_s']:.1f} s, warmed up in {info['warm_s']:.1f} s"
        if side.name != "eager":
            line += (f"; linear form {info['form']} ({info['chosen_by']}"
                     + (f", costs {info['costs']}" if info["costs"] else "") + f"), padding {info['padding']} "
                     f"(rows per step: {', '.join(f'{b} job(s) -> {r}' for b, r in info['padded_rows'].items())}), "
                     f"{info['plan_threads']} threads")
            if side.name == "int8":
                line += f", int8 share of weights {info['quantised']:.3f}"
        print(line, flush=True)
    steps = sides[0].call(decode_steps, seconds)

    walls: dict[tuple[str, int], list[float]] = {}
    passes = 0
    for batch in BATCHES:
        for _ in range(repeats):
            for side in sides if passes % 2 == 0 else sides[::-1]:
                walls.setdefault((side.name, batch), []).append(side.call(timed, batch, seconds))
            passes += 1
    wall = {key: min(values) for key, values in walls.items()}

    print(f"\nspeed ({steps} decode steps per generate; fastest of {repeats} run(s), each run's wall in brackets):")
    print(f"  {'side':<6} {'batch':>5} {'audio-s/s':>10} {'steps/s':>8} {'x eager':>8}   wall s")
    for batch in BATCHES:
        for side in sides:
            seconds_wall = wall[side.name, batch]
            runs = ", ".join(f"{value:.1f}" for value in walls[side.name, batch])
            print(f"  {side.name:<6} {batch:>5} {batch * seconds / seconds_wall:>10.3f} {steps / seconds_wall:>8.2f} "
                  f"{wall['eager', batch] / seconds_wall:>8.2f}   [{runs}]", flush=True)

    fidelities: dict[str, Fidelity] = {}
    lossy = [name for name in ("bf16", "int8") if name in by_name]
    if lossy and "fp32" in by_name:
        batch = max(BATCHES)
        reference = by_name["fp32"].call(greedy, batch, seconds, True)
        for name in lossy:
            free = by_name[name].call(greedy, batch, seconds, False)
            forced = by_name[name].call(greedy, batch, seconds, True, reference.tokens)
            fidelities[name] = fidelity(reference, free, forced)
        print(f"\nfidelity against jamgen fp32 ({batch} prompts, greedy, guidance {CFG_COEF:g}):")
        for name, result in fidelities.items():
            print(f"  {name}: greedy token agreement {result.agreement:.1%} (first differing frame, median over "
                  f"jobs: {result.first_difference:g} of {result.frames}); teacher-forced: largest logit error "
                  f"{result.logit_error:.2e} of the largest |fp32 logit|, greedy pick = fp32's at "
                  f"{result.forced_top1:.1%} of sampled codes; guided logits: median error {result.guided_error:.3f}, "
                  f"fp32's median first-second margin {result.margin:.3f}")
    elif lossy:
        print("\nfidelity: needs fp32 among --modes")

    report_goals(wall, seconds)


def report_goals(wall: dict[tuple[str, int], float], seconds: float) -> None:
    def ratio(name: str, batch: int) -> float | None:
        return wall["eager", batch] / wall[name, batch] if (name, batch) in wall else None

    def goal(text: str, value: float | None, target: float, unit: str = "x") -> None:
        verdict = "not measured" if value is None else f"{value:.2f}{unit} -> {'met' if value >= target else 'missed'}"
        print(f"  {text}: {verdict}")

    print("\ngoals:")
    for batch in BATCHES:
        goal(f"fp32 not slower than eager at batch {batch} (>= 1x)", ratio("fp32", batch), 1.0)
    goal("int8 >= 2x eager at batch 1", ratio("int8", 1), 2.0)
    goal("int8 >= 3x eager at batch 8", ratio("int8", 8), 3.0)
    speed = seconds / wall["int8", 1] if ("int8", 1) in wall else None
    goal("stretch: int8 >= 1 audio-s per wall-s at batch 1", speed, 1.0, " audio-s/s")


if __name__ == "__main__":
    main()
