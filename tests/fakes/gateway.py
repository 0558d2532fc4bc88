"""The gateway half of the fake Discord: websocket sessions that can be resumed, one per shard.

A client that sends no ``shard`` in IDENTIFY holds shard 0 of 1: every guild. A sharded client holds
``[shard_id, shard_count]`` and gets the guilds with ``(guild_id >> 22) % shard_count == shard_id``, and direct
messages on shard 0, as on Discord.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.models import shard_of

log = logging.getLogger(__name__)

# Opcodes: https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-opcodes
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, VOICE_STATE, RESUME, RECONNECT, REQUEST_MEMBERS = 0, 1, 2, 3, 4, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11
INVALID_SHARD = 4010  # close code

Shard = tuple[int, int]  # (shard_id, shard_count)
UNSHARDED: Shard = (0, 1)
Dispatch = tuple[str, dict[str, Any]]


@dataclass
class GatewayStats:
    """What happened on the gateway, for tests to look at."""

    connections: int = 0
    identifies: int = 0
    resumes: int = 0
    heartbeats: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    identified: list[Shard] = field(default_factory=list)  # the shard of each IDENTIFY, in order
    dispatched: list[Dispatch] = field(default_factory=list)  # (event, data) of every dispatch after READY, in order


@dataclass
class Session:
    """One identified session: the shard it holds, its socket while connected, and its numbered dispatches
    (kept for a RESUME)."""

    id: str
    shard: Shard
    live: web.WebSocketResponse | None = None
    sequence: int = 0
    log: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def holds(self, guild_id: int | None) -> bool:
        shard_id, shard_count = self.shard
        return shard_of(guild_id, shard_count) == shard_id

    def frame(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """The next dispatch frame of this session, logged for a RESUME."""
        self.sequence += 1
        self.log.append((self.sequence, event, data))
        return _dispatch_frame(self.sequence, event, data)

    @property
    def connected(self) -> bool:
        return self.live is not None and not self.live.closed


class Gateway:
    """Speaks the gateway protocol (JSON text frames) to discord.py clients, one session per shard.

    ``on_identify`` returns the dispatches that follow a shard's IDENTIFY (READY, then its GUILD_CREATEs); every
    dispatch is logged in its session with its sequence number so a RESUME can replay what the client missed. A
    new IDENTIFY for a shard replaces that shard's session.
    """

    def __init__(self, *, heartbeat_interval_ms: int, on_identify: Callable[[str, Shard], list[Dispatch]],
                 on_change: Callable[[], None]) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_ack = True
        self.stats = GatewayStats()
        self.session_id: str | None = None  # the latest session's
        self.ready = asyncio.Event()  # set at the first IDENTIFY
        self._on_identify = on_identify
        self._on_change = on_change
        self._sockets: list[web.WebSocketResponse] = []  # open connections, identified or not
        self._sessions: dict[Shard, Session] = {}
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        """Whether every session's client identified (or resumed) on a socket that is still open."""
        return bool(self._sessions) and all(session.connected for session in self._sessions.values())

    @property
    def shards(self) -> list[Shard]:
        """The shards that have a session, in the order they identified."""
        return list(self._sessions)

    def holds(self, guild_id: int | None) -> bool:
        """Whether some session gets ``guild_id``'s events (``None``: direct messages)."""
        return any(session.holds(guild_id) for session in self._sessions.values())

    def forget_log(self) -> None:
        """Drop every session's dispatch log (a RESUME then replays nothing older)."""
        for session in self._sessions.values():
            session.log.clear()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler of GET /gateway."""
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        self.stats.connections += 1
        self._sockets.append(socket)
        await self._send(socket, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for message in socket:
                if message.type is WSMsgType.TEXT:
                    await self._receive(socket, json.loads(message.data))
                elif message.type is WSMsgType.ERROR:
                    log.warning("gateway socket error: %s", socket.exception())
        finally:
            self._forget(socket)
            self._on_change()
        return socket

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to the sessions of its guild's shard (``data["guild_id"]``; none: shard 0), or keep it
        for their RESUME while their client is away."""
        guild_id = int(data["guild_id"]) if data.get("guild_id") else None
        self.stats.dispatched.append((event, data))
        async with self._lock:
            targets = [session for session in self._sessions.values() if session.holds(guild_id)]
            if not targets:
                log.warning("gateway: no session holds guild %s; %s dropped", guild_id, event)
            for session in targets:
                frame = session.frame(event, data)
                if session.live is not None:
                    await self._send(session.live, frame)
            self._on_change()

    async def disconnect(self, code: int, shard: Shard | None = None) -> None:
        """Close the clients' sockets (``shard``: that shard's only); the events dispatched meanwhile wait for
        their RESUME."""
        if shard is None:
            sockets = list(self._sockets)
            for session in self._sessions.values():
                session.live = None
        else:
            session = self._sessions[shard]
            sockets, session.live = [session.live] if session.live is not None else [], None
        for socket in sockets:
            await socket.close(code=code, message=b"fake disconnect")

    async def close(self) -> None:
        await self.disconnect(1001)

    def _forget(self, socket: web.WebSocketResponse) -> None:
        if socket in self._sockets:
            self._sockets.remove(socket)
        for session in self._sessions.values():
            if session.live is socket:
                session.live = None

    async def _receive(self, socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        self.stats.received.append(frame)
        op = frame.get("op")
        if op == HEARTBEAT:
            self.stats.heartbeats += 1
            if self.heartbeat_ack:
                await self._send(socket, {"op": HEARTBEAT_ACK, "d": None})
        elif op == IDENTIFY:
            await self._identify(socket, frame.get("d") or {})
        elif op == RESUME:
            await self._resume(socket, frame.get("d") or {})
        elif op in (PRESENCE_UPDATE, VOICE_STATE, REQUEST_MEMBERS):
            log.debug("gateway op %s ignored", op)
        else:
            log.warning("gateway: unexpected frame %s", frame)
        self._on_change()

    async def _identify(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> None:
        shard = _shard(data.get("shard"))
        if shard is None:
            log.warning("gateway: IDENTIFY with an invalid shard %s", data.get("shard"))
            await socket.close(code=INVALID_SHARD, message=b"Invalid shard.")
            return
        self.stats.identifies += 1
        self.stats.identified.append(shard)
        async with self._lock:
            session = Session(secrets.token_hex(16), shard)
            self._sessions.pop(shard, None)  # a new session for the shard: the old one cannot be resumed
            self._sessions[shard] = session
            self.session_id = session.id
            for event, payload in self._on_identify(session.id, shard):
                await self._send(socket, session.frame(event, payload))
            session.live = socket
        self.ready.set()

    async def _resume(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> None:
        session = next((s for s in self._sessions.values() if s.id == data.get("session_id")), None)
        if session is None:
            log.info("gateway: RESUME of unknown session %s", data.get("session_id"))
            await self._send(socket, {"op": INVALID_SESSION, "d": False})
            return
        self.stats.resumes += 1
        seen = int(data.get("seq") or 0)
        async with self._lock:
            for sequence, event, payload in session.log:
                if sequence > seen:
                    await self._send(socket, _dispatch_frame(sequence, event, payload))
            session.sequence += 1
            await self._send(socket, _dispatch_frame(session.sequence, "RESUMED", {}))
            session.live = socket

    @staticmethod
    async def _send(socket: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        if socket.closed:
            return
        await socket.send_str(json.dumps(frame))


def _shard(value: object) -> Shard | None:
    """IDENTIFY's ``shard`` as ``(shard_id, shard_count)`` (absent: unsharded); ``None`` when it is invalid."""
    if value is None:
        return UNSHARDED
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(item, int) for item in value)):
        return None
    shard_id, shard_count = value
    return (shard_id, shard_count) if 0 <= shard_id < shard_count else None


def _dispatch_frame(sequence: int, event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"op": DISPATCH, "s": sequence, "t": event, "d": data}
