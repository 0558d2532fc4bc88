"""Every error the generation engine raises on purpose.

Each carries a message written for the person who asked for the music: the bot and
the CLI show ``str(error)`` as it is, so it never holds a traceback or internals.
"""

from __future__ import annotations


class GenerationError(Exception):
    """Base class: a failure with a message fit for users."""


class InvalidJob(GenerationError):
    """A request was refused before it was queued (bad prompt, duration, params)."""


class ModelLoadError(GenerationError):
    """The model could not be loaded (not cached offline, bad directory, no GPU...)."""


class JobFailed(GenerationError):
    """The job was accepted but could not be completed."""


class MelodyUnreadable(JobFailed):
    """The melody given to condition a job is missing, not audio, or empty."""


class JobCancelled(GenerationError):
    """The job was cancelled before it finished."""


class EncodeError(GenerationError):
    """Audio could not be encoded (missing codec, or no bitrate fits the size cap)."""


class EngineClosed(GenerationError):
    """The engine is shutting down and takes no new jobs."""


def is_out_of_memory(exc: BaseException) -> bool:
    """An accelerator out-of-memory error (CUDA's own type, or another backend's message)."""
    import torch  # not at import time: this module is imported by code that needs no torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_accelerator_cache() -> None:
    """Give cached accelerator memory back after an out-of-memory error (nothing to do on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


OOM_REASON = "Out of GPU memory even on its own: try a shorter duration."  # a job's failure reason
