"""The admit script's arguments and answer: per-user limits and the queue cap, applied in Redis.

The checks themselves run in ``lua/admit.lua`` (atomically with the enqueue); a refusal is
turned into the same :class:`~generation.admission.RateLimited`, with the same words, as the
in-process :class:`~generation.admission.Admission` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from generation.admission import (
    TIME_EPSILON,
    RateLimited,
    UserLimits,
    active_refusal,
    queue_refusal,
    rate_refusal,
)
from generation.jobs import JobRequest
from generation.redis.keys import model_tag, owner_member
from generation.redis.records import text, texts
from generation.redis.scripts import Arg


class DuplicateJob(ValueError):
    """A job id that is already in use."""


@dataclass(frozen=True)
class Admit:
    """One call of the admit script: ``requests`` (one owner's) under ids ``job_ids``."""

    job_ids: Sequence[str]
    requests: Sequence[JobRequest]
    limits: UserLimits
    key: str
    exempt: bool = False
    queue_retry_after: float | None = None
    metas: Sequence[str] | None = None  # per job, the client's record of it (the hash's ``meta``)
    charge: int | None = None  # what the jobs count together against max_active and the rate (None: one each)
    notify: str = ""  # the stream told when the jobs end (the hash's ``notify``); "" for ``events``
    tokens: int | None = None  # what the jobs take from the rate (None: the charge; the bot's long tracks: more)

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("nothing to admit")
        if len(self.job_ids) != len(self.requests) or len(set(self.job_ids)) != len(self.job_ids):
            raise ValueError("give one distinct job id per request")
        if len({request.owner for request in self.requests}) != 1:
            raise ValueError("the requests of one admission must have one owner")
        if self.metas is not None and len(self.metas) != len(self.requests):
            raise ValueError("give one meta per request")
        if self.charge is not None and self.charge < 1:
            raise ValueError(f"the charge must be at least 1, got {self.charge}")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"the tokens must be at least 1, got {self.tokens}")

    @property
    def cost(self) -> int:
        """What the admission counts against ``max_active`` and the rate."""
        return len(self.requests) if self.charge is None else self.charge

    @property
    def rate_tokens(self) -> int:
        """What the admission takes from the rate."""
        return self.cost if self.tokens is None else self.tokens

    def args(self) -> list[Arg]:
        limits = self.limits
        args: list[Arg] = [
            self.key, int(self.exempt), limits.max_active, limits.rate_count, repr(limits.rate_window),
            limits.queue_cap, repr(TIME_EPSILON), self.notify, self.cost, self.rate_tokens, len(self.requests),
        ]
        metas = self.metas if self.metas is not None else [""] * len(self.requests)
        for job_id, request, meta in zip(self.job_ids, self.requests, metas, strict=True):
            args += [job_id, request.model, model_tag(request.model), owner_member(request.owner),
                     request.model_dump_json(), meta]
        return args

    def check(self, reply: Sequence[bytes]) -> None:
        """Raise what the script's answer means, if it is a refusal."""
        verdict, *rest = texts(reply)
        if verdict == "ok":
            return
        raise self.refusal(verdict, rest[0] if rest else "")

    def refusal(self, verdict: str, value: str) -> RateLimited | DuplicateJob:
        if verdict == "active":
            return active_refusal(self.limits, int(value), self.cost)
        if verdict == "rate":
            return rate_refusal(self.limits, float(value) if value else None, self.rate_tokens)
        if verdict == "queue_full":
            return queue_refusal(self.limits, int(value), len(self.requests), self.queue_retry_after)
        if verdict == "duplicate":
            return DuplicateJob(f"job {value} already exists")
        raise RuntimeError(f"unexpected answer from the admit script: {verdict!r} {text(value)!r}")
