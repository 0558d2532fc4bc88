"""Validation of job requests: JobRequest.create, SamplingParams and clean_prompt. No model, no torch."""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from generation.errors import GenerationError, InvalidJob
from generation.jobs import (
    DEFAULT_MAX_DURATION,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    JobRequest,
    OutputFormat,
    SamplingParams,
    clean_prompt,
)

NAN = float("nan")
INF = float("inf")


@pytest.fixture
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_model_id turns an existing directory into a path: run where no 'small' directory exists."""
    monkeypatch.chdir(tmp_path)


# (fields, words the message must hold: the field's name, then the allowed range or values)
BAD_REQUESTS: list[Any] = [
    pytest.param({"prompt": ""}, ["prompt", "empty"], id="prompt-empty"),
    pytest.param({"prompt": "  \t\n  "}, ["prompt", "empty"], id="prompt-whitespace"),
    pytest.param({"prompt": "\x00\x1b\u200b\u202e\u200d"}, ["prompt", "empty"], id="prompt-control-only"),
    pytest.param({"prompt": "a" * (PROMPT_MAX_CHARS + 1)}, ["prompt", "301", "300"], id="prompt-301"),
    pytest.param({"prompt": "a " * 150 + "b"}, ["prompt", "301", "300"], id="prompt-301-with-spaces"),
    pytest.param({"prompt": "lofi", "duration": 0}, ["duration", "between 1 and 30 seconds"], id="duration-0"),
    pytest.param({"prompt": "lofi", "duration": 0.5}, ["duration", "between 1 and 30 seconds"], id="duration-0.5"),
    pytest.param({"prompt": "lofi", "duration": 31}, ["duration", "between 1 and 30 seconds"], id="duration-31"),
    pytest.param({"prompt": "lofi", "duration": 30.001}, ["duration", "between 1 and 30"], id="duration-30.001"),
    pytest.param({"prompt": "lofi", "duration": NAN}, ["duration", "between 1 and 30 seconds"], id="duration-nan"),
    pytest.param({"prompt": "lofi", "duration": INF}, ["duration", "between 1 and 30 seconds"], id="duration-inf"),
    pytest.param({"prompt": "lofi", "duration": -INF}, ["duration", "between 1 and 30 seconds"], id="duration--inf"),
    pytest.param({"prompt": "lofi", "duration": 12, "max_duration": 10}, ["duration", "between 1 and 10 seconds"],
                 id="duration-over-custom-max"),
    pytest.param({"prompt": "lofi", "sampling": {"temperature": NAN}}, ["temperature", "finite", ">= 0"],
                 id="temperature-nan"),
    pytest.param({"prompt": "lofi", "sampling": {"temperature": INF}}, ["temperature", "finite", ">= 0"],
                 id="temperature-inf"),
    pytest.param({"prompt": "lofi", "sampling": {"temperature": -1}}, ["temperature", ">= 0"], id="temperature-neg"),
    pytest.param({"prompt": "lofi", "sampling": {"cfg_coef": NAN}}, ["cfg_coef", ">= 0"], id="cfg-nan"),
    pytest.param({"prompt": "lofi", "sampling": {"top_k": -1}}, ["top_k", "between 0 and 2048"], id="top_k-neg"),
    pytest.param({"prompt": "lofi", "sampling": {"temperature": 6}}, ["temperature", "at most 5"], id="temp-hi"),
    pytest.param({"prompt": "lofi", "sampling": {"cfg_coef": 21}}, ["cfg_coef", "at most 20"], id="cfg-high"),
    pytest.param({"prompt": "lofi", "sampling": {"top_p": -0.1}}, ["top_p", "between 0 and 1"], id="top_p-neg"),
    pytest.param({"prompt": "lofi", "sampling": {"top_p": 1.5}}, ["top_p", "between 0 and 1"], id="top_p-1.5"),
    pytest.param({"prompt": "lofi", "sampling": {"top_p": NAN}}, ["top_p", "between 0 and 1"], id="top_p-nan"),
    pytest.param({"prompt": "lofi", "sampling": {"top_q": 0.5}}, ["top_q", "not permitted"], id="sampling-extra"),
    pytest.param({"prompt": "lofi", "seed": -1}, ["seed", f"between 0 and {SEED_MAX}"], id="seed-neg"),
    pytest.param({"prompt": "lofi", "seed": 2**53}, ["seed", f"between 0 and {SEED_MAX}"], id="seed-2**53"),
    pytest.param({"prompt": "lofi", "bitrate_kbps": 4}, ["bitrate_kbps", "between 8 and 512"], id="bitrate-4"),
    pytest.param({"prompt": "lofi", "bitrate_kbps": 1000}, ["bitrate_kbps", "between 8 and 512"], id="bitrate-1000"),
    pytest.param({"prompt": "lofi", "format": "ogg"}, ["format", "'opus'", "'mp3'", "'wav'", "'flac'"],
                 id="format-ogg"),
    pytest.param({"prompt": "lofi", "colour": "blue"}, ["colour", "not permitted"], id="unknown-field"),
]


@pytest.mark.parametrize(("fields", "words"), BAD_REQUESTS)
def test_bad_values_are_refused_with_a_plain_message(fields: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(InvalidJob) as caught:
        JobRequest.create(**fields)
    message = str(caught.value)
    assert isinstance(caught.value, GenerationError)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    # Plain words for users: no pydantic internals, no URLs, no "Value error, " prefix.
    assert "errors.pydantic.dev" not in message
    assert "Value error" not in message
    assert "\n" not in message


def test_every_problem_is_reported_once() -> None:
    with pytest.raises(InvalidJob) as caught:
        JobRequest.create(prompt="", duration=99, seed=-1)
    message = str(caught.value)
    assert message.count("; ") == 2
    assert message.startswith("prompt: ")
    assert "duration: " in message and "seed: " in message


def test_sampling_params_refuse_bad_values_directly() -> None:
    with pytest.raises(ValidationError, match="top_p"):
        SamplingParams(top_p=2.0)
    with pytest.raises(ValidationError, match="temperature"):
        SamplingParams(temperature=NAN)


PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 jazz"  # "I want" needs its ZWNJ


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        pytest.param("  lofi   slow\t\tbpm \n electro  chill ", "lofi slow bpm electro chill", id="whitespace"),
        pytest.param("lo\x00fi\x1b[31m beat", "lofi[31m beat", id="nul-and-escape"),
        pytest.param("soft\u200b piano", "soft piano", id="zero-width-space"),
        pytest.param("\u202eevil\u202c jazz", "evil jazz", id="rtl-override"),
        pytest.param("guitar 🎸 solo", "guitar 🎸 solo", id="emoji-kept"),
        pytest.param("café crème, Motörhead, 東京", "café crème, Motörhead, 東京", id="accents-kept"),
        pytest.param("a\u00a0b\u2003c", "a b c", id="unicode-spaces"),
        pytest.param("family 👨\u200d👩\u200d👧 band", "family 👨\u200d👩\u200d👧 band", id="zwj-emoji-kept"),
        pytest.param(PERSIAN, PERSIAN, id="persian-zwnj-kept"),
        pytest.param("\u200drock\u200d \u200c", "rock", id="stray-joiners-dropped"),
    ],
)
def test_valid_prompts_are_normalised(raw: str, cleaned: str) -> None:
    assert clean_prompt(raw) == cleaned
    assert JobRequest.create(prompt=raw).prompt == cleaned


@pytest.mark.parametrize("length", [1, PROMPT_MAX_CHARS])
def test_prompt_length_bounds_are_inclusive(length: int) -> None:
    assert len(JobRequest.create(prompt="x" * length).prompt) == length


def test_prompt_limit_counts_after_cleaning() -> None:
    raw = "\u200b".join("x" * PROMPT_MAX_CHARS) + "   \x00\x00"
    assert len(raw) > PROMPT_MAX_CHARS
    assert JobRequest.create(prompt=raw).prompt == "x" * PROMPT_MAX_CHARS


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"duration": 1}, {"duration": 1.0}, id="duration-min"),
        pytest.param({"duration": 30}, {"duration": 30.0}, id="duration-max"),
        pytest.param({"duration": 10, "max_duration": 10}, {"duration": 10.0}, id="duration-custom-max"),
        pytest.param({"seed": 0}, {"seed": 0}, id="seed-0"),
        pytest.param({"seed": SEED_MAX}, {"seed": SEED_MAX}, id="seed-max"),
        pytest.param({"model": "small"}, {"model": "facebook/musicgen-small"}, id="model-short"),
        pytest.param({"model": " medium "}, {"model": "facebook/musicgen-medium"}, id="model-short-padded"),
        pytest.param({"model": "facebook/musicgen-large"}, {"model": "facebook/musicgen-large"}, id="model-hub-id"),
        pytest.param({"format": "wav"}, {"format": OutputFormat.WAV}, id="format-wav"),
        pytest.param({"bitrate_kbps": 8}, {"bitrate_kbps": 8}, id="bitrate-min"),
        pytest.param({"sampling": {"temperature": 0, "top_k": 0, "top_p": 1.0}},
                     {"sampling": SamplingParams(temperature=0.0, top_k=0, top_p=1.0)}, id="sampling-edges"),
    ],
)
@pytest.mark.usefixtures("in_empty_dir")
def test_valid_values_are_accepted(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    request = JobRequest.create(prompt="lofi", **fields)
    for name, value in expected.items():
        assert getattr(request, name) == value


@pytest.mark.usefixtures("in_empty_dir")
def test_defaults() -> None:
    request = JobRequest.create(prompt="lofi")
    assert request.model == "facebook/musicgen-small"
    assert request.format is OutputFormat.OPUS
    assert request.duration == 8.0
    assert request.sampling == SamplingParams()
    assert request.batch_key == request.model


def test_a_random_seed_is_assigned_when_none_is_given() -> None:
    seeds = {JobRequest.create(prompt="lofi").seed for _ in range(5)}
    assert all(isinstance(seed, int) and 0 <= seed <= SEED_MAX for seed in seeds)
    assert len(seeds) > 1  # 5 draws from 2**53 values: a collision is astronomically unlikely


def test_an_explicit_seed_is_kept() -> None:
    assert JobRequest.create(prompt="lofi", seed=42).seed == 42


@pytest.mark.parametrize(
    ("target", "attribute", "value"),
    [
        pytest.param("request", "prompt", "other", id="prompt"),
        pytest.param("request", "duration", 20.0, id="duration"),
        pytest.param("sampling", "temperature", 0.5, id="sampling"),
    ],
)
def test_requests_are_frozen(target: str, attribute: str, value: object) -> None:
    request = JobRequest.create(prompt="lofi", duration=5, sampling={"temperature": 1.0})
    obj = request if target == "request" else request.sampling
    before = getattr(obj, attribute)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(obj, attribute, value)
    assert getattr(obj, attribute) == before


# ---- properties --------------------------------------------------------------------------------

ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=400)  # surrogates too


@given(ANY_TEXT)
def test_clean_prompt_properties(text: str) -> None:
    cleaned = clean_prompt(text)
    joiners = "\u200c\u200d"  # kept inside words: emoji sequences, Persian and Indic scripts
    assert not any(unicodedata.category(ch).startswith("C") and ch not in joiners for ch in cleaned)
    assert not any(word[0] in joiners or word[-1] in joiners for word in cleaned.split(" ") if word)
    assert cleaned == cleaned.strip()
    assert "  " not in cleaned
    assert not any(ch.isspace() and ch != " " for ch in cleaned)
    assert clean_prompt(cleaned) == cleaned


@given(ANY_TEXT)
def test_create_accepts_or_refuses_any_text(text: str) -> None:
    try:
        request = JobRequest.create(prompt=text)
    except InvalidJob as exc:
        assert str(exc).startswith("prompt: ")
    else:
        assert 1 <= len(request.prompt) <= PROMPT_MAX_CHARS
        assert request.prompt == clean_prompt(text)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_create_accepts_or_refuses_any_duration(duration: float) -> None:
    try:
        request = JobRequest.create(prompt="lofi", duration=duration)
    except InvalidJob as exc:
        assert str(exc).startswith("duration: ")
        assert not (1.0 <= duration <= DEFAULT_MAX_DURATION)
    else:
        assert math.isfinite(request.duration)
        assert 1.0 <= request.duration <= DEFAULT_MAX_DURATION
        assert request.duration == duration


def test_a_long_track_is_accepted_up_to_the_cap_with_or_without_a_melody(tmp_path: Path) -> None:
    """Past the model's 30 s window a track slides; one that follows a melody too (the melody loops)."""
    assert JobRequest.create(prompt="lofi", duration=300, max_duration=300).duration == 300
    melody = tmp_path / "tune.wav"
    melody.write_bytes(b"RIFF")
    for duration in (30, 45, 300):
        request = JobRequest.create(prompt="lofi", duration=duration, max_duration=300, melody_from=str(melody))
        assert (request.duration, request.melody_from) == (duration, str(melody))
    with pytest.raises(InvalidJob, match=r"^duration: must be between 1 and 30 seconds \(got 45\)$"):
        JobRequest.create(prompt="lofi", duration=45, max_duration=30, melody_from=str(melody))
