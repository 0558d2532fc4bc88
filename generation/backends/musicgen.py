"""MusicGen through audiocraft: loaded once, lazily, on the worker's thread."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from generation.backends.base import BatchListener, GenerationTask, Join
from generation.errors import ModelLoadError, free_accelerator_cache
from generation.models import HUB_MODELS, resolve_model_id
from generation.windows import EXTEND_STRIDE

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

    from generation.backends.decoder import BatchDecoder

log = logging.getLogger(__name__)

def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was asked for but torch sees no GPU: use --device cpu, or check the driver")
    return device


def _load_hint(model_id: str) -> str:
    if Path(model_id).exists():
        return (
            f"'{model_id}' should hold state_dict.bin and compression_state_dict.bin "
            "(audiocraft's export format)"
        )
    if model_id not in HUB_MODELS:
        return f"'{model_id}' is neither a local directory nor one of: {', '.join(HUB_MODELS)}"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1 is set and the weights are not in the Hugging Face cache"
    return "the weights could not be downloaded from the Hugging Face hub (no network?) and are not cached"


class MusicGenBackend:
    """An audiocraft MusicGen model behind the :class:`~generation.backends.base.Backend` protocol."""

    def __init__(
        self, model_id: str, device: str = "auto", *, precision: str = "auto", linear: str = "auto",
        prefill_chunk: int = 64, max_jobs: int = 8, cuda_graphs: bool = False, extend_stride: float = EXTEND_STRIDE,
    ) -> None:
        self.model_id = resolve_model_id(model_id)
        self.device_name = device
        self._decoder_options: dict[str, Any] = {
            "precision": precision, "linear": linear, "prefill_chunk": prefill_chunk, "max_jobs": max_jobs,
            "cuda_graphs": cuda_graphs, "extend_stride": extend_stride,
        }
        self._model: MusicGen | None = None
        self._decoder: BatchDecoder | None = None

    # -- Backend protocol ------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def sample_rate(self) -> int:
        return int(self._require().sample_rate)

    @property
    def max_duration(self) -> float:
        return float(self._require().max_duration)

    def load(self) -> None:
        if self._model is not None:
            return
        from audiocraft.models import MusicGen  # heavy: imported only when a model is needed

        from generation.backends.decoder import BatchDecoder
        from generation.backends.support import check_supported

        device = resolve_device(self.device_name)
        log.info("loading %s on %s", self.model_id, device)
        try:
            model = MusicGen.get_pretrained(self.model_id, device=device)
        except Exception as exc:
            log.debug("loading %s failed", self.model_id, exc_info=True)
            raise ModelLoadError(f"Could not load the model: {_load_hint(self.model_id)} ({exc}).") from exc
        check_supported(model.lm)  # before the decoder wraps its layers: refuse what it cannot run, and say why
        self._decoder = BatchDecoder(model, **self._decoder_options)
        self._model = model
        log.info("loaded %s: %s Hz, up to %ss", self.model_id, model.sample_rate, model.max_duration)

    def generate(self, tasks: Sequence[GenerationTask], listener: BatchListener, join: Join | None = None) -> None:
        """Every job, continuations and melodies included, runs in the one decode loop."""
        self._require_decoder().run(tasks, listener, join)

    def free_memory(self) -> None:
        free_accelerator_cache()

    # -- helpers ---------------------------------------------------------------------------
    def _require(self) -> MusicGen:
        if self._model is None:
            self.load()
        assert self._model is not None
        return self._model

    def _require_decoder(self) -> BatchDecoder:
        self._require()
        assert self._decoder is not None
        return self._decoder
