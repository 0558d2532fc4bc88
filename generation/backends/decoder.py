"""The step loop: many jobs in one forward pass, each decoded as if it were alone.

Each job is a :class:`~generation.backends.streams.Stream` with its own conditioning,
positions, attention caches, length and random generator; attention is per job
(:mod:`generation.backends.attention`) and everything else in a step is batched.
So the loop is *continuous*: between steps it asks the queue for as many jobs as it
has free rows (the *join check*), and a job that arrives joins at the next step
boundary; a job that is done is decoded and leaves at once, and its row is free.

What stays true whatever joins or leaves (tested bit for bit on a tiny model):

* **A job's codes do not depend on when it joined or who it ran with.** Its rows see
  only its own keys/values; it samples from its own ``torch.Generator``.
* **One row class.** Matmul kernels give a row different low bits depending on how many
  rows share the call. Every decode step is padded with filler rows to a row count of the
  class measured at load for the linear form in use (:mod:`generation.backends.precision`).
* **Prefill runs alone.** A job's prefix (a melody model's conditions) and a
  continuation's prompt tokens run as the job's own forward passes, in chunks of at most
  ``prefill_chunk`` positions, one chunk between two decode steps, so running jobs keep
  their pace and the chunking is the same whoever else is running.
* **A track longer than the model's window slides** (:mod:`generation.backends.sliding`):
  when its window is full the job keeps its place in the loop, its caches start over and
  the last ``window - stride`` frames of its own codes are prefilled as above (after a melody
  model's prefix, made again from the melody at the window's offset), then it samples on. Its
  codes are those of audiocraft's ``MusicGen.generate`` (``generate_with_chroma``) for the duration.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from audiocraft.models.musicgen import MusicGen
from audiocraft.modules.transformer import create_sin_embedding

from generation.backends import attention, static_decoding
from generation.backends.attention import Segment, StepContext
from generation.backends.base import BatchListener, GenerationTask, Join
from generation.backends.precision import PrecisionPlan, apply_precision
from generation.backends.sampling import sample_next_token
from generation.backends.streams import UNKNOWN_TOKEN, Stream, StreamBuilder
from generation.errors import free_accelerator_cache, is_out_of_memory
from generation.windows import EXTEND_STRIDE

log = logging.getLogger(__name__)


class BatchDecoder:
    """Runs jobs through ``model``'s LM with per-job state. Used on one thread at a time."""

    def __init__(
        self, model: MusicGen, *, precision: str = "auto", linear: str = "auto", prefill_chunk: int = 64,
        max_jobs: int = 8, cuda_graphs: bool = False, extend_stride: float = EXTEND_STRIDE,
    ) -> None:
        self.model = model
        self.lm = model.lm
        self.prefill_chunk = prefill_chunk
        self.max_jobs = max_jobs
        self.attention = attention.install(self.lm.transformer)
        self.plan = _apply_precision(model, precision, linear)
        self.builder = StreamBuilder(model, self.attention, extend_stride)
        self.static = static_decoding.for_decoder(
            model, self.attention, enabled=cuda_graphs, max_jobs=max_jobs, min_rows=self.plan.linear.min_rows
        )
        if self.lm.two_step_cfg:
            log.warning("two-step CFG is not supported by jamgen's decoder; using single-pass CFG")

    def prepare(self, task: GenerationTask) -> Stream:
        with self.model.autocast:
            return self.builder.build(task)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, tasks: Sequence[GenerationTask], listener: BatchListener, join: Join | None = None) -> None:
        """Decode ``tasks`` (and, with ``join``, every job it hands out) to the end, reporting through ``listener``."""
        streams: list[Stream] = []
        deferred: list[Stream] = []
        with torch.no_grad():
            self._admit(tasks, streams, listener)
            while True:
                free = self.max_jobs - len(streams)
                if join is not None and free > 0:
                    self._admit(join(free), streams, listener)
                if not streams:
                    break
                stepped = self._advance(streams)
                streams = self._end_of_step(streams, stepped, listener, deferred)
            for stream in deferred:  # decodes that ran out of memory beside other jobs: now alone
                self._finish(stream, listener, retry_later=None)

    def _admit(self, tasks: Sequence[GenerationTask], streams: list[Stream], listener: BatchListener) -> None:
        for task in tasks:
            if listener.is_cancelled(task.job_id):
                continue
            try:
                stream = self.prepare(task)
            except Exception as exc:  # a prompt or input the model cannot take fails alone
                if is_out_of_memory(exc):
                    raise
                log.warning("preparing job %s failed: %r", task.job_id, exc, exc_info=True)
                listener.failed(task.job_id, exc)
                continue
            listener.progress(task.job_id, *stream.progress)  # every job's total up front
            streams.append(stream)

    def _advance(self, streams: list[Stream]) -> list[Stream]:
        """One prefill chunk (of the earliest job still prefilling), then one decode step; returns who stepped."""
        with self.model.autocast:
            waiting = next((stream for stream in streams if not stream.ready), None)
            if waiting is not None:
                self._prefill(waiting)
            ready = [stream for stream in streams if stream.ready and stream is not waiting]
            if ready:
                self._step(ready)
        return ready

    # -- forward passes ------------------------------------------------------------------------
    def _transformer(self, x: torch.Tensor, positions: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """``StreamingTransformer.forward`` with per-row positions and per-job attention: [R, T, D] -> [R, T, D]."""
        transformer = self.lm.transformer
        embedding = create_sin_embedding(
            positions.unsqueeze(-1), x.shape[-1], max_period=transformer.max_period, dtype=x.dtype
        )
        x = x + transformer.positional_scale * embedding
        self.attention.shared.context = StepContext(segments, steps=x.shape[1])
        try:
            for layer in transformer.layers:
                x = layer(x, cross_attention_src=x if layer.cross_attention is not None else None)
        finally:
            self.attention.shared.context = None
        return x

    def _prefill(self, stream: Stream) -> None:
        chunk = stream.next_chunk(self.prefill_chunk)
        start = stream.attention.position
        positions = torch.arange(start, start + chunk.shape[1], device=chunk.device).expand(2, -1)
        self._transformer(chunk, positions, [Segment(slice(0, 2), stream.attention)])
        stream.attention.position += chunk.shape[1]

    def _step(self, ready: list[Stream]) -> None:
        if self.static is not None:  # the CUDA fast path: one fixed-shape step for all rows
            for stream, logits in zip(ready, self.static.step(ready), strict=True):
                self._sample(stream, logits)
                stream.attention.position += 1
            return
        lm = self.lm
        columns = torch.cat([stream.input_column() for stream in ready]).repeat_interleave(2, dim=0)  # [2J, K, 1]
        x = sum(lm.emb[k](columns[:, k]) for k in range(lm.num_codebooks))
        assert isinstance(x, torch.Tensor)
        positions = torch.tensor([stream.attention.position for stream in ready], device=x.device)
        positions = positions.repeat_interleave(2).unsqueeze(1)
        fillers = self.plan.linear.padded_rows(x.shape[0]) - x.shape[0]
        if fillers > 0:  # one row class whatever the number of jobs; fillers attend to nothing
            x = torch.cat([x, x.new_zeros(fillers, *x.shape[1:])])
            positions = torch.cat([positions, positions.new_zeros(fillers, 1)])
        segments = [Segment(slice(2 * i, 2 * i + 2), stream.attention) for i, stream in enumerate(ready)]
        out = self._transformer(x, positions, segments)
        if lm.out_norm:
            out = lm.out_norm(out)
        logits = torch.stack([lm.linears[k](out) for k in range(lm.num_codebooks)], dim=1)  # [R, K, 1, card]
        for index, stream in enumerate(ready):
            self._sample(stream, logits[2 * index : 2 * index + 2])
            stream.attention.position += 1

    @staticmethod
    def _sample(stream: Stream, logits: torch.Tensor) -> None:
        """Guidance, then the job's own sampler, into its next column (prompt and special tokens stay)."""
        params = stream.task.sampling
        cond, uncond = logits[0:1], logits[1:2]
        mixed = uncond + (cond - uncond) * params.cfg_coef
        token = sample_next_token(mixed.permute(0, 1, 3, 2)[..., -1], params, stream.generator)
        column = stream.sequence[..., stream.step : stream.step + 1]
        column.copy_(torch.where(column == UNKNOWN_TOKEN, token, column))
        stream.step += 1

    # -- leaving ----------------------------------------------------------------------------------
    def _end_of_step(
        self, streams: list[Stream], stepped: list[Stream], listener: BatchListener, deferred: list[Stream]
    ) -> list[Stream]:
        """Report progress; a full window slides on; finished and cancelled jobs leave (their rows are free for
        the next join)."""
        moved = {id(stream) for stream in stepped}
        staying = []
        for stream in streams:
            if listener.is_cancelled(stream.job_id):
                continue
            if id(stream) in moved:
                listener.progress(stream.job_id, *stream.progress)
                if stream.window_done and not stream.done:
                    if self._slide(stream, listener):
                        staying.append(stream)
                    continue
                if stream.done:
                    others = len(streams) > 1
                    self._finish(stream, listener, retry_later=deferred if others else None)
                    continue
            staying.append(stream)
        return staying

    def _slide(self, stream: Stream, listener: BatchListener) -> bool:
        """Open the job's next window, prompted with the codes it keeps; its row is prefilled again (in chunks,
        between the other jobs' steps). False: it failed (alone)."""
        if self.static is not None:
            self.static.release(stream)  # its slot is loaded again once the new window is prefilled
        try:
            prompt = stream.close_window()
            assert prompt is not None
            with self.model.autocast:
                self.builder.next_window(stream, prompt)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            log.warning("opening the next window of job %s failed: %r", stream.job_id, exc, exc_info=True)
            listener.failed(stream.job_id, exc)
            return False
        log.debug("job %s slides to window %d of %d", stream.job_id, stream.track.index + 1, len(stream.track.windows))
        return True

    def _finish(self, stream: Stream, listener: BatchListener, retry_later: list[Stream] | None) -> None:
        """Decode the job's codes to audio. Out of memory: free the cache and retry; beside other jobs, retry
        once they are gone (``retry_later``); alone, it fails with the out-of-memory error."""
        for attempt in range(2):
            try:
                codes = stream.codes()
                with self.model.autocast:
                    audio = self.model.generate_audio(codes)
                wav = stream.deliver(audio[0])
                if stream.task.keep_codes:
                    listener.finished(stream.job_id, wav, codes=codes[0].cpu().numpy())
                else:
                    listener.finished(stream.job_id, wav)
                return
            except Exception as exc:
                if not is_out_of_memory(exc):
                    log.exception("decoding job %s failed", stream.job_id)
                    listener.failed(stream.job_id, exc)
                    return
                free_accelerator_cache()
                if attempt == 0:
                    log.warning("out of memory decoding job %s: freed the cache, retrying", stream.job_id)
                    continue
                if retry_later is not None:
                    log.warning("out of memory decoding job %s again: retrying once the batch is done", stream.job_id)
                    stream.attention.caches.clear()  # its codes are all it needs now
                    retry_later.append(stream)
                    return
                listener.failed(stream.job_id, exc)


def _apply_precision(model: MusicGen, precision: str, linear: str) -> PrecisionPlan:
    """Rewrite the decode loop's linears for ``precision`` (:mod:`generation.backends.precision`)."""
    from audiocraft.utils.autocast import TorchAutocast

    lm = model.lm
    device = str(next(iter(lm.parameters())).device)
    on_cpu = device.startswith("cpu")
    plan = apply_precision([lm.transformer, lm.linears] if on_cpu else [lm], precision, device, linear)
    if not plan.autocast:  # fp32 on CUDA; on the CPU audiocraft's autocast is off already
        model.autocast = TorchAutocast(enabled=False)
    return plan
