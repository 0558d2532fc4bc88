"""The engine's settings, read from the environment (and ``.env``), validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from generation.models import DEFAULT_MODEL, resolve_model_id

MAX_DURATION_CAP = 300.0  # the longest JAMGEN_MAX_DURATION: past the model's 30 s window a track slides


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    model: str = Field(DEFAULT_MODEL, validation_alias=AliasChoices("MUSICGEN_MODEL", "model"))
    device: Literal["auto", "cuda", "cpu"] = Field("auto", validation_alias=AliasChoices("JAMGEN_DEVICE", "device"))
    max_batch: int = Field(8, ge=1, le=64, validation_alias=AliasChoices("JAMGEN_MAX_BATCH", "max_batch"))
    max_duration: float = Field(
        30.0, ge=1.0, le=MAX_DURATION_CAP, validation_alias=AliasChoices("JAMGEN_MAX_DURATION", "max_duration"),
        description="the deployment's cap on a track's seconds; past the model's window (30 s) tracks slide",
    )
    batch_window: float = Field(
        0.2, ge=0.0, le=5.0, validation_alias=AliasChoices("JAMGEN_BATCH_WINDOW", "batch_window"),
        description="seconds the worker waits for companions once a job arrives",
    )
    progress_interval: float = Field(
        0.5, gt=0.0, validation_alias=AliasChoices("JAMGEN_PROGRESS_INTERVAL", "progress_interval")
    )
    encode_threads: int = Field(
        2, ge=1, le=16, validation_alias=AliasChoices("JAMGEN_ENCODE_THREADS", "encode_threads")
    )
    job_attempts: int = Field(
        2, ge=1, le=10, validation_alias=AliasChoices("JAMGEN_JOB_ATTEMPTS", "job_attempts"),
        description="runs a job gets when the worker crashes on it (errors that are not about the job itself)",
    )
    batching: Literal["static", "continuous"] = Field(
        "continuous", validation_alias=AliasChoices("JAMGEN_BATCHING", "batching"),
        description="continuous: jobs join the running batch between steps; static: a batch is closed once it starts",
    )
    precision: Literal["auto", "fp32", "bf16", "int8", "fp16"] = Field(
        "auto", validation_alias=AliasChoices("JAMGEN_PRECISION", "precision"),
        description="auto: fp32 on the CPU, fp16 on CUDA; bf16 and int8 are opt-in CPU speed modes",
    )
    linear: Literal["auto", "linear", "swapped", "packed"] = Field(
        "auto", validation_alias=AliasChoices("JAMGEN_LINEAR", "linear"),
        description="the CPU matmul form of the decode loop's linears: auto measures each at load",
    )
    prefill_chunk: int = Field(
        64, ge=1, le=1024, validation_alias=AliasChoices("JAMGEN_PREFILL_CHUNK", "prefill_chunk"),
        description="positions per prefill pass; chunks interleave with decode steps so running jobs keep pace",
    )
    cuda_graphs: bool = Field(
        False, validation_alias=AliasChoices("JAMGEN_CUDA_GRAPHS", "cuda_graphs"),
        description="capture the decode step as a CUDA graph per row bucket (CUDA only)",
    )
    data_dir: Path = Field(Path("data"), validation_alias=AliasChoices("JAMGEN_DATA_DIR", "data_dir"))
    metrics_port: int | None = Field(
        None, ge=1, le=65535, validation_alias=AliasChoices("JAMGEN_METRICS_PORT", "metrics_port"),
        description="serve Prometheus metrics on this port (/metrics); unset: no metrics endpoint",
    )
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, validation_alias=AliasChoices("JAMGEN_METRICS_HOST", "metrics_host"),
        description="the address the metrics endpoint binds (0.0.0.0: every interface)",
    )

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return resolve_model_id(value)
