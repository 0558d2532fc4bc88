"""The decode step with fixed shapes, and its CUDA graphs (one per row bucket).

:class:`StaticStep` is the per-job decode step of :mod:`generation.backends.decoder`
recast so that nothing depends on which jobs run: it reads every row's input tokens and
position from a :class:`~generation.backends.static_cache.StaticCache`, runs embedding,
sinusoidal positions, every layer (the layer's own norms, layer scales and feed-forward;
static self- and cross-attention, one batched SDPA call each for all rows) and the output
heads, and returns the logits ``[rows, K, 1, card]``. No Python loop over jobs, no
``.item()``, no shape that changes between steps of a bucket: eagerly it runs anywhere
(the CPU tests), and :class:`CudaGraphs` captures it per bucket and replays it.

Self-attention of layers that put the norm first only (every released MusicGen);
:func:`unsupported` names what else it refuses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from audiocraft.models.lm import LMModel
from audiocraft.modules.transformer import create_sin_embedding
from einops import rearrange
from torch.nn import functional as F

from generation.backends.attention import JobCrossAttention, JobSelfAttention
from generation.backends.static_cache import StaticCache

log = logging.getLogger(__name__)


def unsupported(lm: LMModel) -> str | None:
    """Why the static step cannot run ``lm`` (its attention wrappers installed), or None."""
    for layer in lm.transformer.layers:
        if not layer.norm_first:
            return "layers that normalise after attention (norm_first: false)"
        if not isinstance(layer.self_attn, JobSelfAttention):
            return "self-attention without jamgen's per-job wrapper"
        if layer.cross_attention is not None and not isinstance(layer.cross_attention, JobCrossAttention):
            return "cross-attention without jamgen's per-job wrapper"
    return None


class StaticStep:
    """``lm``'s decode step over ``cache``: rows ``0..rows-1`` in, their logits out."""

    def __init__(self, lm: LMModel, cache: StaticCache) -> None:
        self.lm = lm
        self.cache = cache

    def __call__(self, rows: int) -> torch.Tensor:
        """Logits [rows, K, 1, card] from ``cache.tokens``/``cache.positions``; writes the rows' keys/values."""
        lm, cache = self.lm, self.cache
        tokens = cache.tokens[:rows]
        x = sum(lm.emb[k](tokens[:, k : k + 1]) for k in range(lm.num_codebooks))  # [R, 1, D]
        assert isinstance(x, torch.Tensor)
        transformer = lm.transformer
        positions = cache.positions[:rows].view(rows, 1, 1)
        embedding = create_sin_embedding(positions, x.shape[-1], max_period=transformer.max_period, dtype=x.dtype)
        x = x + transformer.positional_scale * embedding
        self_mask, text_mask = cache.self_mask(rows), cache.text_mask_for(rows)
        for layer in transformer.layers:
            x = self._layer(layer, x, self_mask, text_mask)
        if lm.out_norm:
            x = lm.out_norm(x)
        return torch.stack([lm.linears[k](x) for k in range(lm.num_codebooks)], dim=1)

    def _layer(self, layer: Any, x: torch.Tensor, self_mask: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """``StreamingTransformerLayer.forward`` (norm first), with static attention."""
        attended = self._self_attention(layer.self_attn, layer.norm1(x), self_mask)
        x = x + layer.layer_scale_1(layer.dropout1(attended))
        if layer.cross_attention is not None:
            attended = self._cross_attention(layer.cross_attention, layer.norm_cross(x), text_mask)
            x = x + layer.layer_scale_cross(layer.dropout_cross(attended))
        return x + layer.layer_scale_2(layer._ff_block(layer.norm2(x)))  # type: ignore[no-any-return]

    def _self_attention(self, attention: JobSelfAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        packed = rearrange(attention.in_proj(x), "b t (p h d) -> b h p t d", p=3, h=attention.heads)
        q, k, v = packed.unbind(dim=2)
        self.cache.write(attention.index, k, v)
        keys, values = self.cache.keys[attention.index][:rows], self.cache.values[attention.index][:rows]
        out = _attend(attention.inner.attention_as_float32, q, keys, values, mask)
        return attention.inner.out_proj(rearrange(out.to(x.dtype), "b h t d -> b t (h d)"))  # type: ignore[no-any-return]

    def _cross_attention(self, attention: JobCrossAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        inner = attention.inner
        q = attention.q_proj(x)
        if inner.qk_layer_norm:
            q = inner.q_layer_norm(q)
        q = rearrange(q, "b t (h d) -> b h t d", h=attention.heads)
        keys = self.cache.text_keys[attention.index][:rows]
        values = self.cache.text_values[attention.index][:rows]
        out = _attend(inner.attention_as_float32, q, keys, values, mask)
        return inner.out_proj(rearrange(out.to(x.dtype), "b h t d -> b t (h d)"))  # type: ignore[no-any-return]


def _attend(
    as_float32: bool, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One SDPA call for every row: ``mask`` [R, 1, 1, keys] says which keys each row sees."""
    if as_float32:
        q = q.float()
    return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)


class CudaGraphs:
    """``step`` captured as one CUDA graph per row count, at that row count's first use, then replayed.

    Capture follows PyTorch's recipe: warm-up runs on a side stream, then capture into a
    memory pool shared by every bucket's graph (they never run at once). A step's side
    effect (each row's key/value at its position) is the same however often it runs, so the
    warm-up runs do no harm. Under autocast the capture disables autocast's weight cache,
    whose casts would otherwise be freed under the graph.
    """

    def __init__(
        self, step: Callable[[int], torch.Tensor], *, autocast_dtype: torch.dtype | None, warmup: int = 2
    ) -> None:
        self.step = step
        self.autocast_dtype = autocast_dtype
        self.warmup = warmup
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool: Any = None

    def __call__(self, rows: int) -> torch.Tensor:
        """Logits of ``rows`` rows: the graph's own output tensor, valid until the next replay."""
        if rows not in self.graphs:
            self.graphs[rows] = self._capture(rows)
        graph, logits = self.graphs[rows]
        graph.replay()
        return logits

    def reset(self) -> None:
        """Drop every graph (the buffers they read moved)."""
        self.graphs.clear()

    def _capture(self, rows: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._autocast():
            for _ in range(self.warmup):
                self.step(rows)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), self._autocast():
            logits = self.step(rows)
        self.pool = graph.pool()
        log.info("captured the decode step for %d rows as a CUDA graph", rows)
        return graph, logits

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
