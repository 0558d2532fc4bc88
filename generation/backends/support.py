"""Refuse, at load time, checkpoints that use what jamgen's decoder does not implement.

The decoder reimplements the LM's step on audiocraft's own weights, so a checkpoint
trained with another attention, position or conditioning scheme would load and then
make wrong music without any error. Every released MusicGen (mono, stereo, melody)
passes: audiocraft's custom attention (``memory_efficient: true`` implies it), causal
self-attention over the whole past, sinusoidal positions, one key/value head per query
head, conditions that are cross-attended or prepended, and guidance in one batched pass.
"""

from __future__ import annotations

from collections.abc import Iterator

from audiocraft.models.lm import LMModel
from audiocraft.modules.transformer import StreamingMultiheadAttention

from generation.errors import ModelLoadError

_SUPPORTED_FUSING = frozenset({"cross", "prepend"})


def _attentions(lm: LMModel) -> Iterator[tuple[str, StreamingMultiheadAttention]]:
    for layer in lm.transformer.layers:
        yield "self", layer.self_attn
        if layer.cross_attention is not None:
            yield "cross", layer.cross_attention


def _attention_problem(kind: str, attention: StreamingMultiheadAttention) -> str | None:
    if not attention.custom:
        return (
            "PyTorch's plain attention (custom: false, memory_efficient: false), which jamgen's decoder "
            "does not support; re-export it with memory_efficient: true"
        )
    if kind == "cross":
        return None
    if not attention.causal:
        return "non-causal self-attention (causal: false), which cannot generate music one step at a time"
    if attention.past_context is not None:
        return (
            f"self-attention limited to the last {attention.past_context} steps (past_context), "
            "which jamgen's decoder does not support; it attends to the whole past"
        )
    if attention.kv_repeat != 1:
        return (
            f"grouped key/value heads (kv_repeat: {attention.kv_repeat}), which jamgen's decoder "
            "does not support; it needs kv_repeat: 1"
        )
    if attention.qk_layer_norm:
        return "layer-normed queries and keys in self-attention (qk_layer_norm: true), which jamgen's decoder skips"
    return None


def _position_problem(lm: LMModel) -> str | None:
    kind = lm.transformer.positional_embedding
    if kind == "sin":
        return None
    rope = lm.transformer.rope
    xpos = " with xpos" if rope is not None and rope.xpos is not None else ""
    return (
        f"rotary position embeddings{xpos} (positional_embedding: {kind}), which jamgen's decoder "
        "does not support; it needs sinusoidal positions (positional_embedding: sin)"
    )


def _fuser_problem(lm: LMModel) -> str | None:
    for method, conditions in lm.fuser.fuse2cond.items():
        if conditions and method not in _SUPPORTED_FUSING:
            names = ", ".join(conditions)
            return (
                f"conditions that are fused with '{method}' ({names}), which jamgen's decoder does not "
                "support; it handles only conditions that are cross-attended or prepended"
            )
    return None


def _guidance_problem(lm: LMModel) -> str | None:
    if lm.two_step_cfg:
        return (
            "two-pass classifier-free guidance (two_step_cfg: true), which jamgen's decoder does not "
            "support; it runs guidance in one batched pass"
        )
    return None


def check_supported(lm: LMModel) -> None:
    """Raise :class:`ModelLoadError` naming the first feature of ``lm`` the decoder does not support."""
    problems = [_attention_problem(kind, attention) for kind, attention in _attentions(lm)]
    problems += [_position_problem(lm), _fuser_problem(lm), _guidance_problem(lm)]
    for problem in problems:
        if problem is not None:
            raise ModelLoadError(f"This checkpoint uses {problem}.")
