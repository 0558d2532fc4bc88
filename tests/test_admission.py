"""Admission limits, throughput and ETAs (generation/admission.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.admission import (
    Admission,
    RateLimited,
    Throughput,
    ThroughputMeter,
    UserLimits,
    estimate_waits,
    estimate_waits_continuous,
    format_wait,
)
from generation.queue import FairQueue

# -- admission ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


RATE_ONLY = UserLimits(max_active=1000, rate_count=5, rate_window=600.0, queue_cap=10_000)


def admit(admission: Admission, key: str = "ann", limits: UserLimits = RATE_ONLY, **kwargs: object) -> None:
    params: dict[str, object] = {"active": 0, "queued_total": 0} | kwargs
    admission.admit(key, limits, **params)  # type: ignore[arg-type]


def refusal(admission: Admission, key: str = "ann", limits: UserLimits = RATE_ONLY, **kwargs: object) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        admit(admission, key, limits, **kwargs)
    return caught.value


def test_five_per_ten_minutes_the_sixth_waits_exactly_two_minutes() -> None:
    clock = FakeClock()
    admission = Admission(clock)
    for _ in range(5):
        admit(admission)
    refused = refusal(admission)
    assert refused.reason == "rate"
    assert refused.retry_after == 120.0
    assert str(refused) == "You can start 5 jobs every 10 min; try again in 2 min."
    clock.now = 100.0
    refused = refusal(admission)
    assert refused.retry_after == pytest.approx(20.0)
    assert "try again in 20 s" in str(refused)
    clock.now = 119.75
    refused = refusal(admission)
    assert refused.retry_after == pytest.approx(0.25)
    assert "try again in 1 s" in str(refused)
    clock.now = 120.0
    admit(admission)  # one token back
    assert refusal(admission).retry_after == pytest.approx(120.0)
    clock.now = 120.0 + 600.0
    for _ in range(5):  # full again after a whole window
        admit(admission)
    assert refusal(admission).retry_after == pytest.approx(120.0)


def test_the_bucket_refills_continuously_and_refusals_cost_nothing() -> None:
    clock = FakeClock()
    admission = Admission(clock)
    for _ in range(5):
        admit(admission)
    for _ in range(3):
        refusal(admission)
    clock.now = 60.0
    assert admission.tokens("ann", RATE_ONLY) == pytest.approx(0.5)
    assert refusal(admission).retry_after == pytest.approx(60.0)
    clock.now = 300.0
    assert admission.tokens("ann", RATE_ONLY) == pytest.approx(2.5)
    admit(admission)
    admit(admission)
    assert refusal(admission).retry_after == pytest.approx(60.0)


def test_a_cost_of_several_tokens_waits_for_all_of_them() -> None:
    clock = FakeClock()
    admission = Admission(clock)
    for _ in range(4):
        admit(admission)
    refused = refusal(admission, cost=2)
    assert refused.retry_after == 120.0
    refused = refusal(admission, cost=6)
    assert (refused.reason, refused.retry_after) == ("rate", None)


def test_check_does_not_consume() -> None:
    admission = Admission(FakeClock())
    for _ in range(20):
        admission.check("ann", RATE_ONLY, active=0, queued_total=0)
    for _ in range(5):
        admit(admission)
    with pytest.raises(RateLimited):
        admission.check("ann", RATE_ONLY, active=0, queued_total=0)


def test_keys_have_separate_buckets() -> None:
    admission = Admission(FakeClock())
    for _ in range(5):
        admit(admission, "ann")
    refusal(admission, "ann")
    admit(admission, "bob")


def test_too_many_jobs_in_progress() -> None:
    admission = Admission(FakeClock())
    limits = UserLimits()
    admit(admission, limits=limits, active=1)
    refused = refusal(admission, limits=limits, active=2)
    assert (refused.reason, refused.retry_after) == ("active", None)
    assert str(refused) == (
        "You already have 2 jobs in progress (the limit is 2); try again when one of your 2 jobs finishes."
    )
    one = UserLimits(max_active=1)
    assert "when your job finishes" in str(refusal(admission, limits=one, active=1))
    assert "at most 2 jobs at a time" in str(refusal(admission, limits=limits, cost=3))


def test_a_full_queue_refuses_everybody_with_the_given_estimate() -> None:
    admission = Admission(FakeClock())
    limits = UserLimits(queue_cap=100)
    admit(admission, limits=limits, queued_total=99)
    refused = refusal(admission, limits=limits, queued_total=100, queue_retry_after=200.0)
    assert (refused.reason, refused.retry_after) == ("queue_full", 200.0)
    assert str(refused).endswith("try again in 3 min 20 s.")
    assert refusal(admission, limits=limits, queued_total=100).retry_after is None


def test_exempt_keys_skip_per_user_limits_but_not_the_queue_cap() -> None:
    admission = Admission(FakeClock())
    for _ in range(50):
        admit(admission, "admin", UserLimits(), active=40, exempt=True)
    assert len(admission) == 0  # never charged
    refused = refusal(admission, "admin", UserLimits(queue_cap=100), queued_total=100, exempt=True)
    assert refused.reason == "queue_full"


def test_refund_gives_tokens_back() -> None:
    clock = FakeClock()
    admission = Admission(clock)
    for _ in range(5):
        admit(admission)
    admission.refund("ann")
    admit(admission)
    refusal(admission)
    admission.refund("nobody")  # no bucket: nothing to do
    for _ in range(5):
        admission.refund("ann")
    assert len(admission) == 0
    assert admission.tokens("ann", RATE_ONLY) == 5


def test_buckets_of_idle_keys_are_forgotten() -> None:
    clock = FakeClock()
    admission = Admission(clock)
    for number in range(1000):
        for _ in range(5):
            admit(admission, f"user{number}")
    assert len(admission) == 1000
    clock.now = 300.0
    for _ in range(5):
        admit(admission, "busy")  # empty until 300 + 600
    assert len(admission) == 1001  # the others are half refilled: still remembered
    clock.now = 600.0
    admission.check("someone", RATE_ONLY, active=0, queued_total=0)
    assert len(admission) == 1  # only "busy", which is not full yet
    clock.now = 900.0
    admission.check("someone", RATE_ONLY, active=0, queued_total=0)
    assert len(admission) == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (0.2, "1 s"), (45, "45 s"), (59.5, "1 min"), (120, "2 min"), (120.0000000001, "2 min"),
     (200, "3 min 20 s"), (3600, "1 h"), (3725, "1 h 2 min 5 s")],
)
def test_format_wait(seconds: float, text: str) -> None:
    assert format_wait(seconds) == text


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        UserLimits(rate_count=0)
    with pytest.raises(ValueError):
        UserLimits(rate_window=0)


# -- throughput and ETAs ------------------------------------------------------------------------------


def test_throughput_is_an_exponentially_weighted_average() -> None:
    meter = Throughput(alpha=0.3)
    assert meter.rate is None
    meter.record(20.0, 10.0)
    assert meter.rate == pytest.approx(2.0)
    meter.record(40.0, 10.0)
    assert meter.rate == pytest.approx(0.3 * 4.0 + 0.7 * 2.0)
    meter.record(10.0, 0.0)  # nonsense is ignored
    meter.record(float("nan"), 1.0)
    assert meter.rate == pytest.approx(2.6)
    assert meter.samples == 2


def test_the_initial_rate_is_a_placeholder_until_the_first_measurement() -> None:
    meter = Throughput(initial_rate=100.0)
    assert meter.rate == 100.0
    meter.record(8.0, 4.0)
    assert meter.rate == pytest.approx(2.0)
    with pytest.raises(ValueError):
        Throughput(alpha=0)


def test_estimate_waits_in_batches() -> None:
    queue = [("a", 10.0), ("b", 20.0), ("c", 30.0)]
    waits = estimate_waits(queue, running_remaining=5.0, rate=2.0, max_batch=2)
    assert waits == {"a": (5.0, 20.0), "b": (5.0, 20.0), "c": (20.0, 35.0)}


def test_estimate_waits_one_at_a_time_when_idle() -> None:
    waits = estimate_waits([("x", 8.0), ("y", 4.0)], running_remaining=0.0, rate=4.0, max_batch=1)
    assert waits == {"x": (0.0, 2.0), "y": (2.0, 3.0)}
    assert estimate_waits([], running_remaining=7.0, rate=4.0, max_batch=8) == {}


def test_estimate_waits_without_a_rate_is_unknown() -> None:
    assert estimate_waits([("x", 8.0)], running_remaining=0.0, rate=None, max_batch=1) is None
    with pytest.raises(ValueError):
        estimate_waits([("x", 8.0)], running_remaining=0.0, rate=0.0, max_batch=1)


@dataclass(frozen=True)
class Queued:
    job_id: str
    owner: str
    duration: float
    batch_key: str = "m"


def fair_order(jobs: list[Queued]) -> list[tuple[str, float]]:
    """``(job id, duration)`` in the order a :class:`FairQueue` holding ``jobs`` starts them."""
    queue: FairQueue[Queued] = FairQueue()
    for job in jobs:
        queue.put(job)
    return [(job.job_id, job.duration) for job in queue.ordered()]


def test_estimates_follow_the_fair_order() -> None:
    order = fair_order([Queued("a1", "ann", 10.0), Queued("a2", "ann", 10.0), Queued("b1", "bob", 30.0)])
    waits = estimate_waits(order, running_remaining=0.0, rate=10.0, max_batch=1)
    assert waits == {"a1": (0.0, 1.0), "b1": (1.0, 4.0), "a2": (4.0, 5.0)}


# -- ETAs with continuous batching: rows free one by one ----------------------------------------------


def test_a_queued_job_takes_the_first_row_that_frees() -> None:
    # Two rows; the whole batch makes 4 audio-s per s, so one row 2: a job of d s takes d / 2 s.
    # Rows free at 3 and 5. a (10 s) takes the row freeing at 3: 3 + 5 = 8. b (4 s): 5 + 2 = 7.
    # c (6 s) takes b's row, which frees first, at 7: 7 + 3 = 10.
    waits = estimate_waits_continuous(
        [("a", 10.0), ("b", 4.0), ("c", 6.0)], running=[3.0, 5.0], rate=4.0, max_batch=2
    )
    assert waits == {"a": (3.0, 8.0), "b": (5.0, 7.0), "c": (7.0, 10.0)}


def test_closed_batches_would_start_the_same_queue_later() -> None:
    # The same queue with static batching: a and b wait for the whole batch (5 s) and end
    # together at 5 + 14 / 4; c waits for both.
    waits = estimate_waits([("a", 10.0), ("b", 4.0), ("c", 6.0)], running_remaining=5.0, rate=4.0, max_batch=2)
    assert waits == {"a": (5.0, 8.5), "b": (5.0, 8.5), "c": (8.5, 10.0)}


def test_idle_rows_start_jobs_at_once() -> None:
    # Four rows, one busy for 6 s; 8 audio-s per s in all, 2 per row. x, y and z start now
    # (done at 4 / 2, 2 / 2, 10 / 2); w takes y's row when it frees at 1, and is done at 1 + 1.
    waits = estimate_waits_continuous(
        [("x", 4.0), ("y", 2.0), ("z", 10.0), ("w", 2.0)], running=[6.0], rate=8.0, max_batch=4
    )
    assert waits == {"x": (0.0, 2.0), "y": (0.0, 1.0), "z": (0.0, 5.0), "w": (1.0, 2.0)}
    assert estimate_waits_continuous([], running=[6.0], rate=8.0, max_batch=4) == {}


def test_with_more_jobs_running_than_rows_a_row_frees_when_enough_have_finished() -> None:
    # Two rows, three jobs running (the setting was lowered), ending at 1, 2 and 9: a row is
    # free only at 2, once two have ended. One row makes 1 audio-s per s.
    waits = estimate_waits_continuous([("a", 3.0), ("b", 1.0)], running=[9.0, 1.0, 2.0], rate=2.0, max_batch=2)
    assert waits == {"a": (2.0, 5.0), "b": (5.0, 6.0)}


def test_continuous_estimates_follow_the_fair_order() -> None:
    # Fair order a1, b1, a2; two rows of 10 audio-s per s each, both free now.
    order = fair_order([Queued("a1", "ann", 10.0), Queued("a2", "ann", 10.0), Queued("b1", "bob", 30.0)])
    waits = estimate_waits_continuous(order, running=[], rate=20.0, max_batch=2)
    assert waits == {"a1": (0.0, 1.0), "b1": (0.0, 3.0), "a2": (1.0, 2.0)}


def test_continuous_estimates_without_a_rate_are_unknown_and_bad_input_is_refused() -> None:
    assert estimate_waits_continuous([("x", 8.0)], running=[], rate=None, max_batch=1) is None
    assert estimate_waits_continuous([("x", 2.0)], running=[-1.0], rate=1.0, max_batch=1) == {"x": (0.0, 2.0)}
    for rate, max_batch, running in [(0.0, 1, []), (math.inf, 1, []), (1.0, 0, []), (1.0, 1, [math.nan])]:
        with pytest.raises(ValueError):
            estimate_waits_continuous([("x", 8.0)], running=running, rate=rate, max_batch=max_batch)


durations = st.lists(st.floats(0.5, 30.0), max_size=12)


@settings(max_examples=200, deadline=None)
@given(queued=durations, running=st.lists(st.floats(0.0, 60.0), max_size=10), max_batch=st.integers(1, 6))
def test_continuous_estimates_never_run_more_than_max_batch_jobs_and_never_leave_a_row_idle(
    queued: list[float], running: list[float], max_batch: int
) -> None:
    queue = [(f"j{n}", duration) for n, duration in enumerate(queued)]
    waits = estimate_waits_continuous(queue, running=running, rate=3.0, max_batch=max_batch)
    assert waits is not None and list(waits) == [job_id for job_id, _ in queue]
    starts = [start for start, _ in waits.values()]
    assert starts == sorted(starts)  # jobs start in queue order
    intervals = [(0.0, left) for left in running] + list(waits.values())
    ends = {end for _, end in intervals}
    for start, _ in waits.values():
        busy = sum(1 for begin, end in intervals if begin <= start < end)
        assert busy <= max_batch  # room for it when it starts
        # it starts at once, or the moment another job ends: no row sits idle while it waits
        assert start == 0.0 or start in ends


@settings(max_examples=100, deadline=None)
@given(queued=durations, left=st.floats(0.0, 60.0), rate=st.floats(0.1, 50.0))
def test_with_one_row_continuous_and_static_batching_agree(queued: list[float], left: float, rate: float) -> None:
    queue = [(f"j{n}", duration) for n, duration in enumerate(queued)]
    continuous = estimate_waits_continuous(queue, running=[left], rate=rate, max_batch=1)
    static = estimate_waits(queue, running_remaining=left, rate=rate, max_batch=1)
    assert continuous is not None and static is not None
    for job_id, _ in queue:
        assert continuous[job_id] == pytest.approx(static[job_id])


def test_the_meter_samples_busy_time_at_least_a_second_long() -> None:
    now = [0.0]
    throughput = Throughput()
    meter = ThroughputMeter(throughput, clock=lambda: now[0])
    meter.finished(5.0)  # not busy: nothing to measure against
    meter.busy()
    now[0] = 0.5
    meter.finished(2.0)  # half a second: kept for the next sample
    assert throughput.rate is None
    now[0] = 1.0
    meter.finished(2.0)
    assert throughput.rate == pytest.approx(4.0)  # 4 s of audio in 1 s
    now[0] = 3.0
    meter.finished(3.0, final=True)  # the loop ends: 3 s in 2 s
    assert throughput.samples == 2
    assert throughput.rate == pytest.approx(0.3 * 1.5 + 0.7 * 4.0)
    now[0] = 10.0
    meter.finished(1.0)  # idle since the loop ended: nothing recorded
    assert throughput.samples == 2


def test_tokens_are_charged_to_the_rate_and_cost_to_the_active_count() -> None:
    """A long track: one request in progress, several tokens (its 30 s units); a refund gives them back."""
    clock = FakeClock()
    admission = Admission(clock)
    limits = UserLimits(max_active=1, rate_count=5, rate_window=600.0, queue_cap=10)
    admission.admit("ann", limits, active=0, queued_total=0, tokens=4)
    assert admission.tokens("ann", limits) == pytest.approx(1.0)
    with pytest.raises(RateLimited, match=r"\(this request counts as 2\); try again in 2 min"):
        admission.check("ann", limits, active=0, queued_total=0, tokens=2)
    admission.refund("ann", 4)
    assert admission.tokens("ann", limits) == pytest.approx(5.0)
    with pytest.raises(RateLimited, match="You already have 1 job in progress"):
        admission.check("ann", limits, active=1, queued_total=0, tokens=1)
