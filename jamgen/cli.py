"""The ``jamgen`` command: run (the Discord bot), worker, generate, doctor, stats, make-test-model."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from generation.errors import GenerationError
from generation.jobs import Normalization, OutputFormat
from generation.models import DEFAULT_MODEL, HUB_MODELS

log = logging.getLogger("jamgen")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jamgen", description="Text to music with MusicGen.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the Discord bot until SIGINT/SIGTERM (settings from .env)")
    run.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default .env)")

    commands.add_parser(
        "worker", help="take jobs from Redis (REDIS_URL) and generate them on this host, until SIGINT/SIGTERM"
    )

    gen = commands.add_parser("generate", help="render prompts to audio files, in one batch")
    gen.add_argument("prompts", nargs="+", help="one or more text prompts")
    gen.add_argument(
        "--duration", type=float, default=8.0,
        help="seconds of audio per prompt (default 8; at most JAMGEN_MAX_DURATION: 30 unless set, up to 300)",
    )
    gen.add_argument("--seed", type=int, default=None, help="random seed, used for every prompt (default: random)")
    gen.add_argument(
        "--model", default=None,
        help=f"hub id ({', '.join(name.split('/')[1] for name in HUB_MODELS)}) or a local directory"
        f" (default: MUSICGEN_MODEL, else {DEFAULT_MODEL})",
    )
    gen.add_argument("--format", choices=[f.value for f in OutputFormat], default="opus")
    gen.add_argument("--bitrate", type=int, default=None, help="kbps for opus/mp3")
    gen.add_argument("--normalize", choices=[n.value for n in Normalization], default="loudness")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=250)
    gen.add_argument("--top-p", type=float, default=0.0)
    gen.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient")
    gen.add_argument(
        "--device", choices=["auto", "cuda", "cpu"], default=None, help="default: JAMGEN_DEVICE, else auto"
    )
    gen.add_argument("--max-batch", type=int, default=None, help="default: JAMGEN_MAX_BATCH, else 8")
    gen.add_argument("-o", "--output", type=Path, default=Path("out"), help="directory for the files")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")

    doctor = commands.add_parser("doctor", help="check the set-up and say how to fix what is wrong")
    doctor.add_argument("--model", default=None, help="also try loading this model (default: MUSICGEN_MODEL)")
    doctor.add_argument("--skip-model", action="store_true", help="do not try to load the model")

    stats = commands.add_parser(
        "stats", help="jobs in the journal by state, and the audio kept; with REDIS_URL, the live workers and the queue"
    )
    stats.add_argument("--data-dir", type=Path, default=None, help="default: JAMGEN_DATA_DIR, else data/")

    tiny = commands.add_parser("make-test-model", help="write a random-weight MusicGen checkpoint (offline demo)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--scale", choices=["tiny", "small"], default="tiny")
    tiny.add_argument(
        "--variant", choices=["mono", "stereo", "melody", "stereo-melody"], default="mono",
        help="melody ones need demucs' htdemucs weights (downloaded once, like MusicGen's) when they load",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from bot.run import main as run_bot

        return run_bot(args.env_file, verbose=args.verbose)
    # audiocraft's EnCodec still uses torch's old weight_norm API; the deprecation notice is not for our users
    warnings.filterwarnings("ignore", message=".*weight_norm is deprecated.*")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "generate":
            from jamgen.generate import run_generate

            return asyncio.run(run_generate(args))
        if args.command == "worker":
            from generation.redis.settings import RedisSettings
            from generation.settings import EngineSettings
            from jamgen.worker import run_worker

            logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
            return asyncio.run(run_worker(EngineSettings(), RedisSettings()))
        if args.command == "stats":
            from generation.redis.settings import RedisSettings
            from generation.settings import EngineSettings
            from jamgen.stats import run_stats

            redis = RedisSettings()
            url = None if redis.url is None else redis.url.get_secret_value()
            return run_stats(args.data_dir or EngineSettings().data_dir, url, redis.prefix)
        if args.command == "doctor":
            from jamgen.doctor import run_doctor

            return run_doctor(args.model, skip_model=args.skip_model)
        from generation.backends.checkpoints import write_random_checkpoint

        path = write_random_checkpoint(args.directory, scale=args.scale, variant=args.variant)
        sys.stdout.write(f"wrote a random {args.scale} {args.variant} MusicGen checkpoint to {path}\n")
        return 0
    except GenerationError as exc:
        sys.stderr.write(f"jamgen: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("jamgen: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
