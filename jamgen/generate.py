"""``jamgen generate``: the notebook's batch, written to files, with a progress bar."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

import aiofiles
from tqdm import tqdm

from generation.encode import EncodedAudio
from generation.errors import JobFailed
from generation.events import Failed, Finished, JobHandle, Progress
from generation.jobs import JobRequest
from generation.settings import EngineSettings
from generation.worker import Engine


def output_name(index: int, prompt: str, audio: EncodedAudio) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].rstrip("-") or "clip"
    return f"{index:02d}-{slug}{audio.extension}"


def build_requests(args: argparse.Namespace, model: str, max_duration: float) -> list[JobRequest]:
    common = {
        "duration": args.duration,
        "model": model,
        "format": args.format,
        "bitrate_kbps": args.bitrate,
        "normalization": args.normalize,
        "sampling": {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "cfg_coef": args.cfg},
    }
    if args.seed is not None:
        common["seed"] = args.seed
    return [JobRequest.create(prompt=prompt, max_duration=max_duration, **common) for prompt in args.prompts]


class _Bar:
    """One bar for the whole batch: decoding steps done over steps in all."""

    def __init__(self, enabled: bool) -> None:
        self._steps: dict[str, tuple[int, int]] = {}
        self._bar = tqdm(total=0, unit="step", desc="generating", disable=not enabled, file=sys.stderr)

    def update(self, job_id: str, done: int, total: int) -> None:
        self._steps[job_id] = (done, total)
        self._bar.total = sum(t for _, t in self._steps.values())
        self._bar.n = sum(d for d, _ in self._steps.values())
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


async def _follow(handle: JobHandle, bar: _Bar) -> EncodedAudio:
    async for event in handle.events():
        if isinstance(event, Progress):
            bar.update(handle.id, event.done, event.total)
        elif isinstance(event, Finished):
            return event.audio
        elif isinstance(event, Failed):
            raise JobFailed(event.reason)
    return await handle.result()  # cancelled: raises


async def run_generate(args: argparse.Namespace) -> int:
    overrides = {"model": args.model, "device": args.device, "max_batch": args.max_batch}
    settings = EngineSettings(batch_window=0.0, **{k: v for k, v in overrides.items() if v is not None})
    requests = build_requests(args, settings.model, settings.max_duration)
    args.output.mkdir(parents=True, exist_ok=True)
    bar = _Bar(enabled=not args.no_progress)
    async with Engine(settings) as engine:
        handles = [engine.submit(request) for request in requests]
        results = await asyncio.gather(*(_follow(h, bar) for h in handles), return_exceptions=True)
    bar.close()
    failures = 0
    for index, (request, result) in enumerate(zip(requests, results, strict=True), start=1):
        if isinstance(result, BaseException):
            failures += 1
            sys.stderr.write(f"failed: {request.prompt!r}: {result}\n")
            continue
        path = await _write(args.output / output_name(index, request.prompt, result), result.data)
        sys.stdout.write(f"{path}  ({result.duration:.1f} s, {len(result.data) / 1024:.0f} KiB, seed {request.seed})\n")
    return 1 if failures else 0


async def _write(path: Path, data: bytes) -> Path:
    async with aiofiles.open(path, "wb") as file:
        await file.write(data)
    return path
