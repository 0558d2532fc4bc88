"""Attention with per-job state: each job's own keys/values, positions and length.

The decode loop runs many jobs through one forward pass. Everything in a step that
treats rows independently (linears, norms, feed-forward, output heads) stays batched;
attention is the only place where rows must not see each other, so it is done per job
here, over exactly the job's own keys and values (no masks, no padding):

* :class:`JobSelfAttention` writes each job's new keys/values into that job's own
  preallocated cache ``[2 (cond, null), heads, capacity, head_dim]`` at the job's own
  position, and attends over the job's exact-length slice. A job can therefore join a
  running batch at any step, with its own length, and leave whenever it is done.
* :class:`JobCrossAttention` attends each job's rows to its own text keys/values,
  projected once when the job is prepared (stock audiocraft recomputes them at every
  step, and pads every text of a batch to the longest, which changes the music).

Each wrapper exposes its projections as ``nn.Linear`` modules that share the original
parameters, so precision modes (:mod:`generation.backends.precision`) rewrite them like
every other linear. Without a :class:`StepContext` the wrappers defer to the stock
module, so audiocraft's own ``generate`` still works on the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from audiocraft.modules.transformer import StreamingMultiheadAttention
from einops import rearrange
from torch import nn
from torch.nn import functional as F

KeyValue = tuple[torch.Tensor, torch.Tensor]


@dataclass
class JobAttentionState:
    """What attention needs of one job: its caches, text keys/values and position."""

    caches: list[KeyValue] = field(default_factory=list)  # per self-attention layer: [2, h, capacity, d] each
    text: list[KeyValue] = field(default_factory=list)  # per cross-attention layer: [2, h, T, d] each
    position: int = 0  # positions already in the caches


@dataclass(frozen=True)
class Segment:
    """The rows of one job in a forward pass (cond row, then null row)."""

    rows: slice
    state: JobAttentionState


@dataclass(frozen=True)
class StepContext:
    """Who owns which rows in the forward pass being run; rows outside every segment are fillers."""

    segments: list[Segment]
    steps: int  # positions per row in this pass (1 for a decode step, more for a prefill chunk)


class _Shared:
    """One holder shared by every wrapper of a model: the context of the pass being run."""

    def __init__(self) -> None:
        self.context: StepContext | None = None


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose parameters are ``weight``/``bias`` (views of the original, no copy)."""
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    module.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias, requires_grad=False)
    return module


class JobSelfAttention(nn.Module):
    def __init__(self, inner: StreamingMultiheadAttention, shared: _Shared, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.shared = shared
        self.index = index  # which entry of a job's ``caches`` is this layer's
        self.heads = inner.num_heads
        self.in_proj = _linear_from(inner.in_proj_weight, inner.in_proj_bias)

    def new_cache(self, capacity: int, like: torch.Tensor) -> KeyValue:
        head_dim = self.inner.embed_dim // self.heads
        shape = (2, self.heads, capacity, head_dim)
        return like.new_empty(shape), like.new_empty(shape)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> tuple[Any, None]:
        context = self.shared.context
        if context is None:
            return self.inner(query, key, value, **kwargs)  # type: ignore[no-any-return]
        q, k, v = split_heads(self.in_proj(query), self.heads, parts=3)
        out = attend_own_caches(q, k, v, context, self.index, self.inner.attention_as_float32)
        x = rearrange(out.to(query.dtype), "b h t d -> b t (h d)")
        return self.inner.out_proj(x), None


def split_heads(projected: torch.Tensor, heads: int, parts: int) -> tuple[torch.Tensor, ...]:
    """A projection ``[R, T, parts * heads * d]`` as ``parts`` tensors ``[R, heads, T, d]`` whose last dimension is
    contiguous. PyTorch's fused CPU attention kernel needs that (else it falls back to its math path, up to 2.6x
    slower per step at decode shapes); the swapped linear form's output is a transposed view, so it is copied once
    per layer."""
    packed = rearrange(projected.contiguous(), "b t (p h d) -> b h p t d", p=parts, h=heads)
    return tuple(packed.unbind(dim=2))


def attend_own_caches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: StepContext, index: int, as_float32: bool
) -> torch.Tensor:
    """Self-attention layer ``index``, job by job: each job's new keys/values ``k``/``v`` [R, h, t, d] go into its
    own cache at its own position, and its rows of ``q`` attend over its cache up to there."""
    out = q.new_zeros(q.shape, dtype=torch.float32 if as_float32 else q.dtype)
    for segment in context.segments:
        keys, values = segment.state.caches[index]
        start = segment.state.position
        end = start + context.steps
        keys[:, :, start:end] = k[segment.rows]
        values[:, :, start:end] = v[segment.rows]
        out[segment.rows] = _attend(q[segment.rows], keys[:, :, :end], values[:, :, :end], start, as_float32)
    return out


def attend_own_texts(q: torch.Tensor, context: StepContext, index: int) -> torch.Tensor:
    """Cross-attention layer ``index``, job by job: each job's rows of ``q`` over its own text keys/values."""
    out = torch.zeros_like(q)
    for segment in context.segments:
        keys, values = segment.state.text[index]
        out[segment.rows] = F.scaled_dot_product_attention(q[segment.rows], keys, values)
    return out


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int, as_float32: bool) -> torch.Tensor:
    """Causal attention of ``q`` (positions ``start`` on) over ``keys``/``values`` (positions 0 on)."""
    mask = None
    steps = q.shape[2]
    if steps > 1:  # a prefill chunk: query i sees keys up to start + i
        mask = torch.ones(steps, start + steps, dtype=torch.bool, device=q.device).tril(diagonal=start)
    if as_float32:
        q, keys, values = q.float(), keys.float(), values.float()
    # A single-step query needs no mask, so torch may pick its fused kernel (stock audiocraft's
    # call on a grown cache takes the math path).
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


class JobCrossAttention(nn.Module):
    def __init__(self, inner: StreamingMultiheadAttention, shared: _Shared, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.shared = shared
        self.index = index
        self.heads = inner.num_heads
        dim = inner.in_proj_weight.shape[0] // 3
        weight, bias = inner.in_proj_weight, inner.in_proj_bias
        chunks = [slice(i * dim, (i + 1) * dim) for i in range(3)]
        self.q_proj, self.k_proj, self.v_proj = (
            _linear_from(weight[part], None if bias is None else bias[part]) for part in chunks
        )

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        (heads,) = split_heads(x, self.heads, parts=1)
        return heads

    def project_text(self, text: torch.Tensor) -> KeyValue:
        """Keys and values of a job's text embedding [2, T, D]: done once per job."""
        keys = self.k_proj(text)
        if self.inner.qk_layer_norm:
            keys = self.inner.k_layer_norm(keys)
        keys, values = self._split(keys), self._split(self.v_proj(text))
        if self.inner.attention_as_float32:
            keys, values = keys.float(), values.float()
        return keys, values

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> tuple[Any, None]:
        context = self.shared.context
        if context is None:
            return self.inner(query, key, value, **kwargs)  # type: ignore[no-any-return]
        q = self.q_proj(query)
        if self.inner.qk_layer_norm:
            q = self.inner.q_layer_norm(q)
        q = self._split(q)
        if self.inner.attention_as_float32:
            q = q.float()
        out = attend_own_texts(q, context, self.index)
        x = rearrange(out.to(query.dtype), "b h t d -> b t (h d)")
        return self.inner.out_proj(x), None


@dataclass
class Installed:
    """The wrappers of one model, and the context holder they share."""

    shared: _Shared
    self_attention: list[JobSelfAttention]
    cross_attention: list[JobCrossAttention]


def install(transformer: nn.Module) -> Installed:
    """Wrap every layer's self- and cross-attention (idempotent); the caller checks support first."""
    existing = getattr(transformer, "_jamgen_attention", None)
    if isinstance(existing, Installed):
        return existing
    shared = _Shared()
    selfs: list[JobSelfAttention] = []
    crosses: list[JobCrossAttention] = []
    for layer in transformer.layers:  # type: ignore[union-attr]
        layer.self_attn = JobSelfAttention(layer.self_attn, shared, len(selfs))
        selfs.append(layer.self_attn)
        if layer.cross_attention is not None:
            layer.cross_attention = JobCrossAttention(layer.cross_attention, shared, len(crosses))
            crosses.append(layer.cross_attention)
    installed = Installed(shared, selfs, crosses)
    transformer._jamgen_attention = installed  # type: ignore[assignment]
    return installed
