"""The step loop: many jobs in one forward pass, each decoded as if it were alone.

What we own here, and why (see ``shared/notes/musicgen-decoding.md``):

* **Conditioning per job.** Each job's text goes through the conditioner alone (with
  its null twin for guidance, as stock audiocraft does for a single prompt) and the
  cross-attention reads only that job's keys/values, projected once per job
  (:mod:`generation.backends.cross_attention`). Padding never enters a job's music.
* **Sampling per job.** Each job has a ``torch.Generator`` seeded with its seed and
  its own temperature / top-k / top-p / guidance.
* **Durations per job.** Each job has its own delay-pattern sequence; a shorter job's
  sequence ends in special tokens, exactly as when it runs alone. It is decoded and
  reported the step it completes, and its rows leave the batch.
* **A fixed row class.** Matmul kernels give a row different low bits depending on how
  many rows share the call. ``min_jobs`` keeps at least that many jobs' rows in every
  forward pass (filler rows ride along when fewer are left), so on the CPU a job's
  bits do not depend on its batch at all. See the README's "Determinism".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from audiocraft.models.musicgen import MusicGen
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditionType
from audiocraft.modules.streaming import StreamingModule

from generation.backends import cross_attention, fast_linear, self_attention
from generation.backends.base import BatchListener, GenerationTask
from generation.backends.sampling import sample_next_token

log = logging.getLogger(__name__)

UNKNOWN_TOKEN = -1
FIRST_STEP = 1  # the delay pattern's column 0 is all special tokens


@dataclass
class _Row:
    """One job's place in the batch (or a filler, which has no task)."""

    task: GenerationTask | None
    sequence: torch.Tensor  # [1, K, S]: this job's delay-pattern sequence
    pattern: Any
    frames: int
    text_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [2, ...] rows = (cond, null)
    text_len: int
    other_conditions: dict[str, ConditionType]  # non-cross conditions, rows = (cond, null)
    generator: torch.Generator | None = None
    active: bool = True
    last_step: int = field(init=False)

    def __post_init__(self) -> None:
        self.last_step = self.sequence.shape[-1] - 1
        if self.task is None:
            self.active = False


class BatchDecoder:
    """Runs one batch through ``model``'s LM with per-job state. Used on one thread at a time."""

    def __init__(self, model: MusicGen, min_jobs: int = 1) -> None:
        self.model = model
        self.lm = model.lm
        self.min_jobs = max(1, min_jobs)
        self.layers = cross_attention.install(self.lm.transformer)
        self.self_attention = self_attention.install(self.lm.transformer)
        if next(iter(self.lm.parameters())).device.type == "cpu":  # the decode loop's layers only
            fast_linear.install(self.lm.transformer)
            fast_linear.install(self.lm.linears)
        cond2fuse = self.lm.fuser.cond2fuse
        self.cross_names = [name for name, op in cond2fuse.items() if op == "cross"]
        if self.lm.two_step_cfg:
            log.warning("two-step CFG is not supported by jamgen's decoder; using single-pass CFG")

    # -- preparing one job ------------------------------------------------------------
    def _conditions(self, prompt: str) -> dict[str, ConditionType]:
        attributes, _ = self.model._prepare_tokens_and_attributes([prompt], None)
        null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
        tokenized = self.lm.condition_provider.tokenize(attributes + null)
        return dict(self.lm.condition_provider(tokenized))

    def _text_kv(self, conditions: dict[str, ConditionType]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Each layer's text keys/values for (cond, null), and the text length."""
        cross = {name: conditions[name] for name in self.cross_names if name in conditions}
        if not cross:
            return [], 0
        any_tensor = next(iter(cross.values()))[0]
        probe = torch.zeros(any_tensor.shape[0], 1, self.lm.dim, device=any_tensor.device, dtype=any_tensor.dtype)
        _, text = self.lm.fuser(probe, cross)  # the fuser joins cross conditions exactly as in stock
        return [layer.project_text(text) for layer in self.layers], text.shape[1]

    def _pattern_sequence(self, frames: int) -> tuple[torch.Tensor, Any]:
        pattern = self.lm.pattern_provider.get_pattern(frames)
        device = next(iter(self.lm.parameters())).device
        codes = torch.full((1, self.lm.num_codebooks, frames), UNKNOWN_TOKEN, dtype=torch.long, device=device)
        sequence, _, _ = pattern.build_pattern_sequence(codes, self.lm.special_token_id)
        return sequence, pattern

    def prepare(self, task: GenerationTask) -> _Row:
        frames = int(task.duration * self.model.frame_rate)
        conditions = self._conditions(task.prompt)
        sequence, pattern = self._pattern_sequence(frames)
        generator = torch.Generator(device=sequence.device)
        generator.manual_seed(task.seed)
        others = {name: value for name, value in conditions.items() if name not in self.cross_names}
        text_kv, text_len = self._text_kv(conditions)
        return _Row(task, sequence, pattern, frames, text_kv, text_len, others, generator)

    def filler(self, like: _Row) -> _Row:
        """A row that only keeps the row count up; its outputs are never read."""
        special = torch.full_like(like.sequence, self.lm.special_token_id)
        return _Row(None, special, like.pattern, like.frames, like.text_kv, like.text_len, like.other_conditions)

    # -- the batch's shared state --------------------------------------------------------
    def _set_text(self, rows: list[_Row]) -> None:
        """Group rows by text length and hand each layer its per-row keys/values."""
        count = len(rows)
        by_length: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            if row.text_kv:
                by_length.setdefault(row.text_len, []).append(index)
        for layer_index, layer in enumerate(self.layers):
            groups = []
            for members in by_length.values():
                order = [(i, 0) for i in members] + [(i, 1) for i in members]  # cond rows, then null rows
                device = rows[members[0]].sequence.device
                row_ids = torch.tensor([i + count * half for i, half in order], device=device)
                keys = torch.cat([rows[i].text_kv[layer_index][0][half : half + 1] for i, half in order])
                values = torch.cat([rows[i].text_kv[layer_index][1][half : half + 1] for i, half in order])
                groups.append(cross_attention.RowGroup(row_ids, keys, values))
            layer.groups = groups

    def _other_conditions(self, rows: list[_Row]) -> dict[str, ConditionType]:
        stacked: dict[str, ConditionType] = {}
        for name in rows[0].other_conditions:
            parts = [row.other_conditions[name] for row in rows]
            tensors = [p[0][half : half + 1] for half in (0, 1) for p in parts]
            masks = [p[1][half : half + 1] for half in (0, 1) for p in parts]
            stacked[name] = (torch.cat(tensors), torch.cat(masks))
        return stacked

    def _forward(self, columns: torch.Tensor, others: dict[str, ConditionType]) -> torch.Tensor:
        """The body of ``LMModel.forward`` with our cross-attention: [R, K, S] -> [2R, K, S, card]."""
        lm = self.lm
        # Rows that left early (cancelled riders) hold unknown tokens; they only keep the row count up.
        columns = columns.masked_fill(columns == UNKNOWN_TOKEN, lm.special_token_id)
        doubled = torch.cat([columns, columns], dim=0)
        x = sum(lm.emb[k](doubled[:, k]) for k in range(lm.num_codebooks))
        x, _ = lm.fuser(x, others)
        out = lm.transformer(x, cross_attention_src=x if self.layers else None)
        if lm.out_norm:
            out = lm.out_norm(out)
        logits = torch.stack([lm.linears[k](out) for k in range(lm.num_codebooks)], dim=1)
        if lm.fuser.fuse2cond["prepend"]:
            logits = logits[:, :, -columns.shape[-1] :]
        return logits

    def _prune(self, rows: list[_Row], sequences: torch.Tensor, keep: list[int]) -> torch.Tensor:
        """Drop rows from every streaming state (CFG doubles them: cond rows, then null rows)."""
        count = len(rows)
        index = torch.tensor(keep, device=sequences.device)
        doubled = torch.cat([index, index + count])

        def prune(_: str, module: StreamingModule) -> None:
            for key, value in module._streaming_state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 2 * count:
                    module._streaming_state[key] = value.index_select(0, doubled)

        self.lm._apply_named_streaming(prune)
        return sequences.index_select(0, index)

    # -- the loop ---------------------------------------------------------------------------
    def _sample(self, rows: list[_Row], logits: torch.Tensor, sequences: torch.Tensor, step: int) -> None:
        cond, uncond = logits.split(len(rows), dim=0)
        for index, row in enumerate(rows):
            if not row.active or row.task is None or row.generator is None or step > row.last_step:
                continue
            params = row.task.sampling
            mixed = uncond[index : index + 1] + (cond[index : index + 1] - uncond[index : index + 1]) * params.cfg_coef
            token = sample_next_token(mixed.permute(0, 1, 3, 2)[..., -1], params, row.generator)
            column = sequences[index : index + 1, :, step : step + 1]
            column.copy_(torch.where(column == UNKNOWN_TOKEN, token, column))

    def _finish(self, row: _Row, sequence: torch.Tensor, listener: BatchListener) -> None:
        assert row.task is not None
        row.active = False
        try:
            codes, _, _ = row.pattern.revert_pattern_sequence(
                sequence[..., : row.last_step + 1].contiguous(), UNKNOWN_TOKEN
            )
            audio = self.model.generate_audio(codes[..., : row.frames])
            listener.finished(row.task.job_id, audio[0].float().cpu().numpy())
        except Exception as exc:  # a decode error concerns this job only
            log.exception("decoding job %s failed", row.task.job_id)
            listener.failed(row.task.job_id, exc)

    def _end_of_step(self, rows: list[_Row], sequences: torch.Tensor, step: int, listener: BatchListener) -> None:
        for index, row in enumerate(rows):
            if not row.active or row.task is None:
                continue
            if listener.is_cancelled(row.task.job_id):
                row.active = False
                continue
            listener.progress(row.task.job_id, min(step, row.last_step), row.last_step)
            if step >= row.last_step:
                self._finish(row, sequences[index : index + 1], listener)

    def _rows_to_keep(self, rows: list[_Row]) -> list[int]:
        keep = [i for i, row in enumerate(rows) if row.active]
        riders = [i for i, row in enumerate(rows) if not row.active]
        keep += riders[: max(0, self.min_jobs - len(keep))]
        return sorted(keep)

    def run(self, rows: list[_Row], listener: BatchListener) -> None:
        """Decode ``rows`` (from :meth:`prepare`) to the end, reporting through ``listener``."""
        rows = rows + [self.filler(rows[0]) for _ in range(self.min_jobs - len(rows))]
        length = max(row.sequence.shape[-1] for row in rows)
        special = self.lm.special_token_id
        sequences = torch.cat(
            [torch.nn.functional.pad(row.sequence, (0, length - row.sequence.shape[-1]), value=special) for row in rows]
        )
        for row in rows:  # every job's total up front, so a client can show one overall bar
            if row.task is not None:
                listener.progress(row.task.job_id, 0, row.last_step)
        for attention in self.self_attention:
            attention.start(capacity=length)
        try:
            with self.lm.streaming():
                self._set_text(rows)
                others = self._other_conditions(rows)
                for step in range(FIRST_STEP, length):
                    with self.model.autocast:
                        logits = self._forward(sequences[..., step - 1 : step], others)
                        self._sample(rows, logits, sequences, step)
                    self._end_of_step(rows, sequences, step, listener)
                    if not any(row.active for row in rows):
                        break
                    keep = self._rows_to_keep(rows)
                    if len(keep) < len(rows):
                        sequences = self._prune(rows, sequences, keep)
                        rows = [rows[i] for i in keep]
                        self._set_text(rows)
                        others = self._other_conditions(rows)
        finally:
            for layer in self.layers:
                layer.groups = None
            for attention in self.self_attention:
                attention.stop()
