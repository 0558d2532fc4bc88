"""A private ``redis-server`` for tests: 127.0.0.1, a free port, its own directory, AOF on.

Never the system service: each test session starts its own and stops it by its pid. AOF with
``appendfsync always``, so an acknowledged write survives ``kill -9``; no RDB snapshots.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

log = logging.getLogger(__name__)

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class RedisServerMissing(RuntimeError):
    pass


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing(
            "redis-server is not installed, and the Redis tests need one: run scripts/setup.sh "
            "(it installs Debian's redis-server), or `apt-get install redis-server`"
        )
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One ``redis-server`` process on ``port``, with its data in ``directory``."""

    directory: Path
    port: int = field(default_factory=free_port)
    binary: str = field(default_factory=redis_server_binary)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    @classmethod
    def launch(cls, directory: Path, tries: int = 5) -> RedisServer:
        """Start a server on a free port (another port if that one was taken meanwhile)."""
        for _ in range(tries - 1):
            server = cls(directory)
            try:
                server.start()
                return server
            except RuntimeError as exc:
                log.warning("redis-server did not start on port %d: %s", server.port, exc)
        server = cls(directory)
        server.start()
        return server

    def command(self) -> list[str]:
        return [
            self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", str(self.directory / "redis.log"),
        ]

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except RuntimeError:
            self.stop()
            raise
        log.info("redis-server %d on port %d in %s", self.process.pid, self.port, self.directory)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then wait; SIGKILL if it has not exited within ``timeout`` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("redis-server %d ignored SIGTERM for %.0f s: killing it", process.pid, timeout)
            process.kill()
            process.wait(timeout)

    def kill9(self) -> None:
        """``kill -9`` the server: no shutdown, no last write (only what the AOF already holds survives)."""
        process, self.process = self.process, None
        if process is None:
            raise RuntimeError("the server is not running")
        process.send_signal(signal.SIGKILL)
        process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Start again on the same port and directory (it loads the AOF)."""
        self.start()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with code {self.process.returncode}; see {self._log()}")
                try:
                    if client.info("persistence").get("loading") == 0:
                        return
                except redis.exceptions.RedisError:
                    pass
                time.sleep(0.05)
            raise RuntimeError(f"redis-server was not ready within {START_TIMEOUT:.0f} s; see {self._log()}")
        finally:
            client.close()

    def _log(self) -> Path:
        return self.directory / "redis.log"
