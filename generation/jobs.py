"""What a user asks for: a validated, immutable job request.

Validation happens here, once, for every client (bot, CLI, remote worker), and
every refusal is an :class:`~generation.errors.InvalidJob` with a plain message.
"""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from generation.errors import InvalidJob
from generation.models import DEFAULT_MODEL, resolve_model_id

PROMPT_MAX_CHARS = 300
DEFAULT_MAX_DURATION = 30.0
MIN_DURATION = 1.0
SEED_MAX = 2**53 - 1  # what a Discord integer option and JSON can carry exactly
TEMPERATURE_MAX = 5.0  # beyond this MusicGen samples noise
TOP_K_MAX = 2048  # EnCodec's codebook size: a larger k means no cut-off
CFG_MAX = 20.0

_WHITESPACE = re.compile(r"\s+")


class OutputFormat(str, Enum):
    OPUS = "opus"
    MP3 = "mp3"
    WAV = "wav"
    FLAC = "flac"

    @property
    def lossless(self) -> bool:
        return self in (OutputFormat.WAV, OutputFormat.FLAC)


class Normalization(str, Enum):
    """The normalisation strategies of audiocraft's ``audio_write`` that we offer."""

    PEAK = "peak"
    LOUDNESS = "loudness"
    NONE = "none"


_JOINERS = "\u200c\u200d"  # ZWNJ, ZWJ: needed by emoji sequences and Persian / Indic words


def _keep(ch: str) -> bool:
    return ch.isspace() or ch in _JOINERS or unicodedata.category(ch)[0] != "C"


def clean_prompt(text: str) -> str:
    """Drop control and format characters (zero-width spaces, bidi overrides), collapse spaces."""
    kept = (" " if ch.isspace() else ch for ch in text if _keep(ch))
    collapsed = _WHITESPACE.sub(" ", "".join(kept))
    words = (word.strip(_JOINERS) for word in collapsed.split(" "))  # a joiner only joins inside a word
    return " ".join(word for word in words if word)


class SamplingParams(BaseModel):
    """How tokens are drawn; each job in a batch keeps its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # strict: a bool or a numeric string is a client bug, not a value
    temperature: float = Field(1.0, strict=True, description="0 means greedy decoding")
    top_k: int = Field(250, strict=True)
    top_p: float = Field(0.0, strict=True)
    cfg_coef: float = Field(3.0, strict=True)

    @field_validator("temperature", "cfg_coef")
    @classmethod
    def _finite_non_negative(cls, value: float, info: ValidationInfo) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"must be a finite number >= 0 (got {value})")
        limit = TEMPERATURE_MAX if info.field_name == "temperature" else CFG_MAX
        if value > limit:
            raise ValueError(f"must be at most {limit:g} (got {value:g})")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if not 0 <= value <= TOP_K_MAX:
            raise ValueError(f"must be between 0 and {TOP_K_MAX} (got {value})")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise ValueError(f"must be between 0 and 1 (got {value})")
        return value


class JobRequest(BaseModel):
    """One prompt to render. Build it with :meth:`create` to get :class:`InvalidJob` errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    duration: float = Field(8.0, strict=True)
    seed: int = Field(default_factory=lambda: secrets.randbelow(SEED_MAX + 1), strict=True)
    sampling: SamplingParams = SamplingParams()
    model: str = DEFAULT_MODEL
    format: OutputFormat = OutputFormat.OPUS
    bitrate_kbps: int | None = None
    normalization: Normalization = Normalization.LOUDNESS
    max_file_bytes: int | None = Field(None, gt=0, description="re-encode smaller until the file fits")
    owner: str | None = Field(None, description="opaque to the engine: who asked")
    continue_from: str | None = Field(
        None, description="an audio file to extend; then ``duration`` is the seconds to add to it"
    )
    melody_from: str | None = Field(
        None, description="an audio file whose melody (chroma) guides a melody model (its first 30 s; "
        "under a longer track it loops, as audiocraft's ``generate_with_chroma``)"
    )
    continue_codes: str | None = Field(
        None, description="a file of EnCodec codes ([K, T] integers, .npy) to extend without re-encoding audio; then "
        "``duration`` is the seconds to add; the result is the codes heard decoded, then the new part"
    )
    keep_codes: bool = Field(False, strict=True, description="hand back the job's codes ([K, T], prompt included)")
    audio_note: str | None = Field(
        None, max_length=300, description="opaque to the engine: which part of an uploaded file the job uses (the card "
        "says it), e.g. 'continues the last 10 s of song.mp3 (1:20–1:30)'"
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        cleaned = clean_prompt(value)
        if not cleaned:
            raise ValueError("is empty: describe the music you want, e.g. 'lofi beat with soft piano'")
        if len(cleaned) > PROMPT_MAX_CHARS:
            raise ValueError(f"is {len(cleaned)} characters long; the limit is {PROMPT_MAX_CHARS}")
        return cleaned

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: float, info: ValidationInfo) -> float:
        max_duration = float((info.context or {}).get("max_duration", DEFAULT_MAX_DURATION))
        if not math.isfinite(value) or not MIN_DURATION <= value <= max_duration:
            raise ValueError(f"must be between {MIN_DURATION:g} and {max_duration:g} seconds (got {value:g})")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int) -> int:
        if not 0 <= value <= SEED_MAX:
            raise ValueError(f"must be between 0 and {SEED_MAX} (got {value})")
        return value

    @field_validator("bitrate_kbps")
    @classmethod
    def _bitrate(cls, value: int | None) -> int | None:
        if value is not None and not 8 <= value <= 512:
            raise ValueError(f"must be between 8 and 512 kbps (got {value})")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        return resolve_model_id(value)

    @field_validator("continue_from")
    @classmethod
    def _continue_from(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _audio_input(value, info, "the audio file to extend", "the clip to extend")

    @field_validator("melody_from")
    @classmethod
    def _melody_from(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _audio_input(value, info, "the audio file with the melody", "the melody file")

    @field_validator("continue_codes")
    @classmethod
    def _continue_codes(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _audio_input(value, info, "the codes file to extend", "the codes to extend")

    @model_validator(mode="after")
    def _one_prompt(self) -> JobRequest:
        if self.continue_codes is not None and self.continue_from is not None:
            raise ValueError("continue_from and continue_codes: give one prompt, the audio or its codes, not both")
        return self

    @classmethod
    def create(cls, *, max_duration: float = DEFAULT_MAX_DURATION, **fields: Any) -> JobRequest:
        """Validate ``fields``; raise :class:`InvalidJob` with one readable line per problem."""
        if not math.isfinite(max_duration) or max_duration < MIN_DURATION:
            raise ValueError(f"max_duration must be a number >= {MIN_DURATION:g}, got {max_duration}")
        try:
            return cls.model_validate(fields, context={"max_duration": max_duration})
        except ValidationError as exc:
            raise InvalidJob(describe_validation_error(exc)) from None

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys may share one forward pass. Conditioning, sampling, length and audio inputs
        are per job (continuations and melodies included), so only the model counts."""
        return self.model


def _audio_input(value: str | None, info: ValidationInfo, path_of: str, name: str) -> str | None:
    """An audio file a job reads: a path to an existing file (a stored record may outlive it)."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"is empty: give the path of {path_of}")
    if not (info.context or {}).get("stored") and not Path(value).is_file():
        raise ValueError(f"{name} no longer exists (it may have been cleaned up)")
    return value


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "request"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where.replace('sampling.', '')}: {message}")
    return "; ".join(lines)
