"""What the benchmarks that drive the bot through the fake Discord share: log capture, percentiles, refusals.

Imported as ``benchmarks.common`` by scripts that put the repository root on ``sys.path`` first.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

from tests.fakes.discord import FakeInteraction

DEFERRED, REPLIED = 5, 4  # interaction callback types: deferred (accepted), an immediate reply (a refusal)
REFUSALS = {"You already have": "jobs in progress", "You can start": "rate", "The queue is full": "queue full"}
VOICE = "is not installed, voice will NOT be supported"  # discord.py's note at start-up, not a problem


class LogRecords(logging.Handler):
    """Every WARNING or worse that anything logs during the run."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def capture_log() -> LogRecords:
    """Collect every WARNING or worse on the root logger (printed in the report, not as they come)."""
    warnings.filterwarnings("ignore", message=".*weight_norm is deprecated.*")
    records = LogRecords()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.WARNING)
    return records


def show_log(records: list[logging.LogRecord], validation_errors: list[str],
               describe: Callable[[logging.LogRecord], None]) -> None:
    """The count of log records (besides the voice note) and OpenAPI validation errors, then the first of each."""
    problems = [record for record in records if not record.getMessage().endswith(VOICE)]
    print(f"log records at WARNING or above: {len(problems)} (besides discord.py's notes that voice is off); "
          f"OpenAPI validation errors: {len(validation_errors)}")
    for record in problems[:20]:
        describe(record)
    for error in validation_errors[:5]:
        print(f"  validation: {error[:300]}")


def nearest_rank(values: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of ``values`` (``inf`` stands for a missing acknowledgement)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def ms(value: float) -> str:
    return "-" if math.isnan(value) else "never" if math.isinf(value) else f"{value * 1000:.1f}"


def latency_table(rows: Iterable[tuple[str, list[float]]], percents: Sequence[float]) -> None:
    """A header, then a row per named list of latencies: count, the nearest-rank ``percents`` and the max, in ms."""
    print(f"  {'':<13} {'count':>5} " + " ".join(f"{f'p{p:g}':>8}" for p in percents) + f" {'max':>8}")
    for name, values in rows:
        print(f"  {name:<13} {len(values):>5} " + " ".join(f"{ms(nearest_rank(values, p)):>8}" for p in percents)
              + f" {ms(max(values, default=math.nan)):>8}")


def refusal_reasons(interactions: Iterable[FakeInteraction | None]) -> dict[str, int]:
    """What the refusals (immediate replies) said, by kind of limit."""
    counts: dict[str, int] = {}
    for interaction in interactions:
        callback = interaction.callback if interaction is not None else None
        if callback is not None and callback.type == REPLIED:
            text = str((callback.data or {}).get("content", ""))
            kind = next((name for start, name in REFUSALS.items() if text.startswith(start)), repr(text[:60]))
            counts[kind] = counts.get(kind, 0) + 1
    return counts
