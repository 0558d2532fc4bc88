"""``jamgen worker`` processes on a private Redis, for the tests and ``benchmarks/scaleout.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent


class WorkerProcesses:
    """``jamgen worker`` processes serving ``model_dir`` on ``server`` (one torch thread each, offline, on the CPU),
    each logging to ``log_dir``; :meth:`stop` stops them (SIGKILL if need be). ``settings``: more environment."""

    def __init__(self, server: RedisServer, model_dir: Path, log_dir: Path, settings: Mapping[str, str]) -> None:
        self.env = os.environ | {
            "REDIS_URL": server.url, "MUSICGEN_MODEL": str(model_dir), "JAMGEN_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(REPO), **settings,
        }
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"worker-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "jamgen.cli", "worker"], cwd=self.log_dir, env=self.env,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        self.processes.append(process)
        return process

    def check(self) -> None:
        """Raise if a worker has exited."""
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"worker {process.pid} exited with code {process.returncode}\n{self.logs()}")

    def kill9(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.log_dir.glob("*.log")))
