"""Cross-attention to each job's own text, computed once per job.

Stock audiocraft pads every description of a batch to the longest one and attends
to the padding, so a prompt's music depends on its batch mates; it also recomputes
the text keys/values at every step. :class:`JobCrossAttention` replaces the
cross-attention module of each transformer layer: text K/V are projected once per
job at its own length, and each step attends every row to its own job's K/V only.
Without a context it defers to the original module, so stock ``generate`` still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from audiocraft.modules.transformer import StreamingMultiheadAttention, _get_attention_time_dimension
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from generation.backends.fast_linear import linear


@dataclass
class RowGroup:
    """Rows (of the doubled CFG batch) whose text has the same length, with their K/V."""

    rows: torch.Tensor  # long [n]
    keys: torch.Tensor  # [n, heads, T, d] or [n, T, heads, d], as the layer's layout
    values: torch.Tensor


class JobCrossAttention(nn.Module):
    def __init__(self, inner: StreamingMultiheadAttention) -> None:
        super().__init__()
        if not (inner.custom and inner.cross_attention and inner.kv_repeat == 1):
            raise ValueError("per-job cross-attention needs audiocraft's custom cross-attention")
        self.inner = inner
        self.groups: list[RowGroup] | None = None
        self._layout = "b h t d" if _get_attention_time_dimension(inner.memory_efficient) == 2 else "b t h d"

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, f"b t (h d) -> {self._layout}", h=self.inner.num_heads)

    def _in_proj(self, x: torch.Tensor, part: int) -> torch.Tensor:
        dim = self.inner.in_proj_weight.shape[0] // 3
        weight = self.inner.in_proj_weight[part * dim : (part + 1) * dim]
        bias = None if self.inner.in_proj_bias is None else self.inner.in_proj_bias[part * dim : (part + 1) * dim]
        return linear(x, weight, bias)

    def project_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values for a job's text embedding [rows, T, D]: done once per job."""
        keys = self._in_proj(text, 1)
        values = self._in_proj(text, 2)
        if self.inner.qk_layer_norm:
            keys = self.inner.k_layer_norm(keys)
        keys, values = self._split(keys), self._split(values)
        if self.inner.attention_as_float32:
            keys, values = keys.float(), values.float()
        return keys, values

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> tuple[Any, None]:
        if self.groups is None:
            return self.inner(query, key, value, **kwargs)  # type: ignore[no-any-return]
        dtype = query.dtype
        q = self._in_proj(query, 0)
        if self.inner.qk_layer_norm:
            q = self.inner.q_layer_norm(q)
        q = self._split(q)
        if self.inner.attention_as_float32:
            q = q.float()
        out = torch.empty_like(q)
        for group in self.groups:
            attended = F.scaled_dot_product_attention(q.index_select(0, group.rows), group.keys, group.values)
            out.index_copy_(0, group.rows, attended)
        x = rearrange(out.to(dtype), f"{self._layout} -> b t (h d)", h=self.inner.num_heads)
        return self.inner.out_proj(x), None


def install(transformer: nn.Module) -> list[JobCrossAttention]:
    """Swap every layer's cross-attention for a :class:`JobCrossAttention` (idempotent)."""
    wrappers = []
    for layer in transformer.layers:  # type: ignore[union-attr]
        current = layer.cross_attention
        if current is None:
            continue
        if not isinstance(current, JobCrossAttention):
            current = JobCrossAttention(current)
            layer.cross_attention = current
        wrappers.append(current)
    return wrappers
