"""The gateway half of the fake Discord: one websocket session that can be resumed."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

# Opcodes: https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-opcodes
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, VOICE_STATE, RESUME, RECONNECT, REQUEST_MEMBERS = 0, 1, 2, 3, 4, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11


@dataclass
class GatewayStats:
    """What happened on the gateway, for tests to look at."""

    connections: int = 0
    identifies: int = 0
    resumes: int = 0
    heartbeats: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)


class Gateway:
    """Speaks the gateway protocol (JSON text frames) to one discord.py client at a time.

    ``on_identify`` returns the dispatches that follow IDENTIFY (READY, then GUILD_CREATEs); every dispatch
    is logged with its sequence number so a RESUME can replay what the client missed.
    """

    def __init__(self, *, heartbeat_interval_ms: int, on_identify: Callable[[str], list[tuple[str, dict[str, Any]]]],
                 on_change: Callable[[], None]) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_ack = True
        self.stats = GatewayStats()
        self.session_id: str | None = None
        self.ready = asyncio.Event()
        self._on_identify = on_identify
        self._on_change = on_change
        self._socket: web.WebSocketResponse | None = None  # the latest connection
        self._live: web.WebSocketResponse | None = None  # the connection that identified or resumed
        self._sequence = 0
        self._log: list[tuple[int, str, dict[str, Any]]] = []
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        """Whether a client identified (or resumed) on a socket that is still open."""
        return self._live is not None and not self._live.closed

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler of GET /gateway."""
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        self.stats.connections += 1
        self._socket = socket
        await self._send(socket, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for message in socket:
                if message.type is WSMsgType.TEXT:
                    await self._receive(socket, json.loads(message.data))
                elif message.type is WSMsgType.ERROR:
                    log.warning("gateway socket error: %s", socket.exception())
        finally:
            if self._socket is socket:
                self._socket = None
            if self._live is socket:
                self._live = None
            self._on_change()
        return socket

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        """Send an event (or keep it for a RESUME when the client is away); returns its sequence number."""
        async with self._lock:
            self._sequence += 1
            self._log.append((self._sequence, event, data))
            if self._live is not None:
                await self._send(self._live, _dispatch_frame(self._sequence, event, data))
            self._on_change()
            return self._sequence

    async def disconnect(self, code: int) -> None:
        """Close the client's socket; the events dispatched meanwhile wait for its RESUME."""
        socket = self._socket
        self._socket = self._live = None
        if socket is not None:
            await socket.close(code=code, message=b"fake disconnect")

    async def close(self) -> None:
        await self.disconnect(1001)

    async def _receive(self, socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        self.stats.received.append(frame)
        op = frame.get("op")
        if op == HEARTBEAT:
            self.stats.heartbeats += 1
            if self.heartbeat_ack:
                await self._send(socket, {"op": HEARTBEAT_ACK, "d": None})
        elif op == IDENTIFY:
            await self._identify(socket)
        elif op == RESUME:
            await self._resume(socket, frame.get("d") or {})
        elif op in (PRESENCE_UPDATE, VOICE_STATE, REQUEST_MEMBERS):
            log.debug("gateway op %s ignored", op)
        else:
            log.warning("gateway: unexpected frame %s", frame)
        self._on_change()

    async def _identify(self, socket: web.WebSocketResponse) -> None:
        self.stats.identifies += 1
        async with self._lock:
            self.session_id = secrets.token_hex(16)
            self._log.clear()
            for event, data in self._on_identify(self.session_id):
                self._sequence += 1
                self._log.append((self._sequence, event, data))
                await self._send(socket, _dispatch_frame(self._sequence, event, data))
            self._live = socket
        self.ready.set()

    async def _resume(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("session_id") != self.session_id or self.session_id is None:
            log.info("gateway: RESUME of unknown session %s", data.get("session_id"))
            await self._send(socket, {"op": INVALID_SESSION, "d": False})
            return
        self.stats.resumes += 1
        seen = int(data.get("seq") or 0)
        async with self._lock:
            for sequence, event, payload in self._log:
                if sequence > seen:
                    await self._send(socket, _dispatch_frame(sequence, event, payload))
            self._sequence += 1
            await self._send(socket, _dispatch_frame(self._sequence, "RESUMED", {}))
            self._live = socket

    @staticmethod
    async def _send(socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        if socket.closed:
            return
        await socket.send_str(json.dumps(frame))


def _dispatch_frame(sequence: int, event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"op": DISPATCH, "s": sequence, "t": event, "d": data}
