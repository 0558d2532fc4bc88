"""Key names under a prefix, and how owners and models become parts of them.

The Lua scripts build the same names from the prefix (``lua/common.lua``); the two must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_PREFIX = "jamgen:"
GROUP = "workers"  # the consumer group on the run stream
ANONYMOUS = "anon"  # the rotation member of jobs without an owner: they share one lane
_NAMED = "u:"


def owner_member(owner: str | None) -> str:
    """The rotation member (and lane name part) of ``owner``: ``u:<owner>``, or ``anon`` for ``None``."""
    return ANONYMOUS if owner is None else _NAMED + owner


def member_owner(member: str) -> str | None:
    """The inverse of :func:`owner_member`."""
    if member == ANONYMOUS:
        return None
    if not member.startswith(_NAMED):
        raise ValueError(f"not an owner member: {member!r}")
    return member[len(_NAMED) :]


def model_tag(model: str) -> str:
    """``model`` as a key part: percent-encoded, so it holds no ``:`` and a lane name splits one way only."""
    return quote(model, safe="")


@dataclass(frozen=True)
class Keys:
    """Every key and channel name, under ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    @property
    def run(self) -> str:
        return self.prefix + "run"

    @property
    def events(self) -> str:
        return self.prefix + "events"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    @property
    def queued(self) -> str:
        return self.prefix + "queued"

    @property
    def seq(self) -> str:
        return self.prefix + "seq"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}result:{job_id}"

    def ready(self, model: str) -> str:
        return f"{self.prefix}ready:{model_tag(model)}"

    def lane(self, model: str, owner: str | None) -> str:
        return f"{self.prefix}lane:{model_tag(model)}:{owner_member(owner)}"

    def active(self, key: str) -> str:
        return f"{self.prefix}active:{key}"

    def wake(self, model: str) -> str:
        """The pub/sub channel told when jobs of ``model`` are queued (workers with free rows listen)."""
        return f"{self.prefix}wake:{model_tag(model)}"

    def input(self, digest: str) -> str:
        """An audio input's bytes (an Extend's clip, a melody), by their sha256."""
        return f"{self.prefix}input:{digest}"

    def notify(self, client: str) -> str:
        """``client``'s own events stream: where the jobs it admitted with ``notify`` end (a bot's name)."""
        return f"{self.prefix}events:{client}"

    def rate(self, key: str) -> str:
        return f"{self.prefix}rate:{key}"

    @property
    def workers(self) -> str:
        """The live workers' names, scored by when each was last seen (server time, s)."""
        return self.prefix + "workers"

    @property
    def models(self) -> str:
        """The models workers have served or jobs were queued for (raw ids), scored by when a worker was last
        seen serving it (0: none yet)."""
        return self.prefix + "models"

    def worker(self, name: str) -> str:
        """A worker's registry hash (see :mod:`generation.redis.registry`)."""
        return f"{self.prefix}worker:{name}"

    def progress(self, job_id: str) -> str:
        """The pub/sub channel of one job's progress (``progress:*`` for every job's)."""
        return f"{self.prefix}progress:{job_id}"
