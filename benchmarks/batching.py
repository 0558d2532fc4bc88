"""Throughput: plain audiocraft one request at a time vs the engine serving them together.

    .venv/bin/python benchmarks/batching.py            # 8 requests of 2 s, ~5 minutes on 2 CPU cores

Both sides run the real musicgen-small architecture (24 layers, dim 1024, ~420M LM
parameters) with random weights on the CPU, built by ``jamgen make-test-model --scale
small``; T5, which needs the hub, is replaced by a look-up table over spaCy's offline
word tokenizer, so prompts have several tokens as with T5.

* baseline: ``MusicGen.get_pretrained(dir)`` then ``generate([prompt])`` for each request
  in turn -- what other MusicGen bots do (half before the engine's run, half after);
* engine: the requests arrive at once from concurrent tasks; the engine batches them,
  generates, and encodes each (to 16-bit WAV, so the music can be compared).

It prints audio-seconds per wall-second for both, their ratio (goal: >= 5), for
reference stock audiocraft with all prompts in one ``generate`` call, and the
event loop's longest stall while the engine generated on its thread, and how many
jobs came out of the batch with the same audio as plain audiocraft gave them alone
under ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import multiprocessing
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import torch
from audiocraft.models import MusicGen

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe_machine
from generation.backends.checkpoints import write_random_checkpoint
from generation.jobs import JobRequest
from generation.settings import EngineSettings
from generation.worker import Engine

T = TypeVar("T")
PROMPTS = [
    "lofi slow bpm electro chill with organic samples",
    "crazy EDM, heavy bang",
    "80s driving pop song with heavy drums and synth pads in the background",
    "a light and cheerly EDM track, with syncopated drums, aery pads, and strong emotions",
    "epic orchestral film score with choir",
    "acoustic folk guitar by a campfire",
    "jazz trio late at night, brushed drums, walking bass",
    "reggae dub with deep bass and echo",
]


def offline_tokenizer() -> None:
    from audiocraft.modules.conditioners import WhiteSpaceTokenizer

    defaults = WhiteSpaceTokenizer.__init__.__defaults__ or ()
    WhiteSpaceTokenizer.__init__.__defaults__ = tuple("blank:en" if d == "en_core_web_sm" else d for d in defaults)


def prompts(count: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(count)]


def load_plain(model_dir: Path, seconds: float) -> MusicGen:
    model = MusicGen.get_pretrained(str(model_dir), device="cpu")
    model.set_generation_params(duration=seconds)
    model.generate(["warm up"])  # first-call costs out of the timing, as for the engine's warm-up
    return model


def plain_run(model_dir: Path, seconds: float, jobs: list[tuple[int, str]]) -> tuple[float, list[np.ndarray]]:
    """Plain audiocraft, one request after the other (in a fresh process, like a bot's)."""
    warnings.filterwarnings("ignore")
    offline_tokenizer()
    model = load_plain(model_dir, seconds)
    outputs = []
    start = time.perf_counter()
    for seed, prompt in jobs:
        torch.manual_seed(seed)
        outputs.append(model.generate([prompt])[0].numpy())
    return time.perf_counter() - start, outputs


async def _ticker(stop: asyncio.Event, worst: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], loop.time() - before - 0.01)


def plain_batch_run(model_dir: Path, seconds: float, count: int) -> float:
    """For reference: plain audiocraft given all the prompts in one generate() call."""
    warnings.filterwarnings("ignore")
    offline_tokenizer()
    model = load_plain(model_dir, seconds)
    start = time.perf_counter()
    model.generate(prompts(count))
    return time.perf_counter() - start


def engine_run(model_dir: Path, count: int, seconds: float) -> tuple[float, float, list[np.ndarray]]:
    """The engine in a fresh process, as in the bot."""
    warnings.filterwarnings("ignore")
    offline_tokenizer()
    return asyncio.run(_engine_run(model_dir, count, seconds))


async def _engine_run(model_dir: Path, count: int, seconds: float) -> tuple[float, float, list[np.ndarray]]:
    settings = EngineSettings(model=str(model_dir), device="cpu", max_batch=count, batch_window=0.2)
    async with Engine(settings) as engine:
        await engine.warm_up()
        # one throwaway job, as the plain side's warm-up generate(): first-call costs out of the timing
        await engine.submit(JobRequest.create(prompt="warm up", duration=seconds, model=str(model_dir))).result()

        async def one(seed: int, prompt: str) -> bytes:
            request = JobRequest.create(
                prompt=prompt, duration=seconds, model=str(model_dir), seed=seed, format="wav", normalization="none"
            )
            return (await engine.submit(request).result()).data

        stop, worst = asyncio.Event(), [0.0]
        ticker = asyncio.create_task(_ticker(stop, worst))
        start = time.perf_counter()
        files = await asyncio.gather(*(one(seed, p) for seed, p in enumerate(prompts(count))))
        elapsed = time.perf_counter() - start
        stop.set()
        await ticker
    return elapsed, worst[0], [read_wav(data) for data in files]


def read_wav(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray() for frame in container.decode(audio=0)]
    return np.concatenate(frames, axis=1).astype(np.float32) / 32768


def same_music(plain: np.ndarray, served: np.ndarray) -> bool:
    """Equal codes decode to equal audio: the 16-bit WAV may differ by rounding only."""
    return plain.shape == served.shape and float(np.abs(np.clip(plain, -1, 1) - served).max()) <= 2 / 32768


def in_process(function: Callable[..., T], *args: Any) -> T:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio per request")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    offline_tokenizer()  # the checkpoint is built here; each process patches the tokenizer itself
    audio = args.requests * args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "musicgen-small-random", scale="small", tokenizer="whitespace")
        print(describe_machine())
        print(f"musicgen-small architecture, random weights, CPU, {torch.get_num_threads()} threads")
        print(f"{args.requests} requests x {args.seconds:g} s of audio")
        # Each side runs in a fresh process (two torch thread pools in one process fight
        # over the cores), and they alternate -- half the plain requests, the engine, the
        # other half -- so that a drift in the machine's speed falls on both.
        jobs = list(enumerate(prompts(args.requests)))
        half = len(jobs) // 2
        first, reference = in_process(plain_run, model_dir, args.seconds, jobs[:half])
        served, stall, batched = in_process(engine_run, model_dir, args.requests, args.seconds)
        second, rest = in_process(plain_run, model_dir, args.seconds, jobs[half:])
        plain, reference = first + second, reference + rest
        together = in_process(plain_batch_run, model_dir, args.seconds, args.requests)
        print(f"plain audiocraft, one at a time: {plain:7.1f} s wall  {audio / plain:.3f} audio-s/s")
        print(f"engine, concurrent requests:     {served:7.1f} s wall  {audio / served:.3f} audio-s/s")
        print(f"(reference) plain audiocraft, all {args.requests} in one generate(): {together:.1f} s wall  "
              f"{audio / together:.3f} audio-s/s, {plain / together:.2f}x one at a time")
    print(f"ratio engine / plain: {plain / served:.2f}x  (goal >= 5)")
    print(f"event loop longest stall while generating: {stall * 1000:.0f} ms")
    identical = sum(same_music(a, b) for a, b in zip(reference, batched, strict=True))
    print(f"jobs whose batched audio equals plain audiocraft alone (same seed): {identical}/{args.requests}")


if __name__ == "__main__":
    main()
