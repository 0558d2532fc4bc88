"""Self-attention with a preallocated key/value cache for the decode loop.

Stock audiocraft grows each layer's cache with ``torch.cat`` at every step, so a step
copies the whole cache: at 16 rows (8 jobs with guidance) that copying, and the
attention path it forces, cost as much as all the linear layers on the CPU. Here each
layer writes the step's keys/values into a buffer sized for the whole batch and
attends to a view of it. The buffer lives in the layer's streaming state, so it is
dropped when streaming ends and pruned with the other per-row state.

Only audiocraft's custom attention with sinusoidal positions, no local context and no
grouped keys is taken over (every released MusicGen); anything else stays stock.
"""

from __future__ import annotations

from typing import Any

import torch
from audiocraft.modules.transformer import StreamingMultiheadAttention, _get_attention_time_dimension
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from generation.backends.fast_linear import linear


def supported(attention: StreamingMultiheadAttention) -> bool:
    return bool(
        attention.custom
        and attention.causal
        and not attention.cross_attention
        and not attention.rope
        and attention.past_context is None
        and attention.kv_repeat == 1
        and not attention.qk_layer_norm
        and _get_attention_time_dimension(attention.memory_efficient) == 2
    )


class CachedSelfAttention(nn.Module):
    def __init__(self, inner: StreamingMultiheadAttention) -> None:
        super().__init__()
        self.inner = inner
        self.capacity: int | None = None  # steps in the batch; None = behave as stock
        self.position = 0

    def start(self, capacity: int) -> None:
        self.capacity, self.position = capacity, 0

    def stop(self) -> None:
        self.capacity, self.position = None, 0

    def _cache(self, name: str, like: torch.Tensor) -> torch.Tensor:
        state = self.inner._streaming_state
        if name not in state:
            batch, heads, _, dim = like.shape
            assert self.capacity is not None
            state[name] = like.new_zeros(batch, heads, self.capacity, dim)
        return state[name]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> tuple[Any, None]:
        if self.capacity is None or not self.inner._is_streaming:
            return self.inner(query, key, value, **kwargs)  # type: ignore[no-any-return]
        inner, steps = self.inner, query.shape[1]
        projected = linear(query, inner.in_proj_weight, inner.in_proj_bias)
        packed = rearrange(projected, "b t (p h d) -> b h p t d", p=3, h=inner.num_heads)
        q, k, v = packed.unbind(dim=2)
        keys, values = self._cache("cache_keys", k), self._cache("cache_values", v)
        start, end = self.position, self.position + steps
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self.position = end
        mask = None
        if steps > 1:  # a prefill: query i sees keys up to start + i
            mask = torch.ones(steps, end, dtype=torch.bool, device=q.device).tril(diagonal=start)
        keys, values = keys[:, :, :end], values[:, :, :end]
        if inner.attention_as_float32:
            q, keys, values = q.float(), keys.float(), values.float()
        # With no mask for a single-step query torch can pick its fused kernel; stock audiocraft's
        # causal call on a grown cache takes the math path, which writes a scaled, transposed copy
        # of every layer's keys at every step.
        x = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = rearrange(x.to(query.dtype), "b h t d -> b t (h d)")
        return inner.out_proj(x), None


def install(transformer: nn.Module) -> list[CachedSelfAttention]:
    """Wrap every supported self-attention (idempotent); returns the wrappers."""
    wrappers = []
    for layer in transformer.layers:  # type: ignore[union-attr]
        current = layer.self_attn
        if not isinstance(current, CachedSelfAttention):
            if not supported(current):
                continue
            current = CachedSelfAttention(current)
            layer.self_attn = current
        wrappers.append(current)
    return wrappers
