"""Checkpoints the decoder cannot run are refused at load, naming what they use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from audiocraft.models import MusicGen, builders
from omegaconf import OmegaConf

from generation.backends.checkpoints import checkpoint_config, write_random_checkpoint
from generation.backends.support import check_supported
from generation.errors import ModelLoadError


@pytest.mark.parametrize(
    "fixture",
    [
        "tiny_model_dir",
        "tiny_words_model_dir",
        "tiny_stereo_model_dir",
        "tiny_melody_model_dir",
        "tiny_stereo_melody_model_dir",
    ],
)
def test_every_released_variant_is_supported(
    fixture: str, request: pytest.FixtureRequest, offline_demucs: None
) -> None:
    model = MusicGen.get_pretrained(str(request.getfixturevalue(fixture)), device="cpu")
    check_supported(model.lm)


def test_plain_pytorch_attention_loads_but_is_refused(tmp_path: Path) -> None:
    plain = {"transformer_lm": {"custom": False, "memory_efficient": False}}
    model = MusicGen.get_pretrained(str(write_random_checkpoint(tmp_path, overrides=plain)), device="cpu")
    assert not model.lm.transformer.layers[0].self_attn.custom

    with pytest.raises(ModelLoadError) as refused:
        check_supported(model.lm)

    assert str(refused.value) == (
        "This checkpoint uses PyTorch's plain attention (custom: false, memory_efficient: false), which jamgen's "
        "decoder does not support; re-export it with memory_efficient: true."
    )


def test_custom_attention_without_memory_efficient_is_supported() -> None:
    check_supported(_lm({"transformer_lm": {"custom": True, "memory_efficient": False}}))


def _lm(overrides: dict[str, Any]) -> Any:
    return builders.get_lm_model(OmegaConf.create(checkpoint_config(overrides=overrides)))


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"transformer_lm": {"causal": False}}, "non-causal self-attention (causal: false)"),
        ({"transformer_lm": {"past_context": 16}}, "last 16 steps (past_context)"),
        ({"transformer_lm": {"kv_repeat": 2}}, "grouped key/value heads (kv_repeat: 2)"),
        ({"transformer_lm": {"qk_layer_norm": True}}, "layer-normed queries and keys in self-attention"),
        (
            {"transformer_lm": {"positional_embedding": "rope"}},
            "rotary position embeddings (positional_embedding: rope)",
        ),
        ({"transformer_lm": {"positional_embedding": "sin_rope"}}, "(positional_embedding: sin_rope)"),
        (
            {"transformer_lm": {"positional_embedding": "rope", "xpos": True}},
            "rotary position embeddings with xpos (positional_embedding: rope)",
        ),
        ({"fuser": {"cross": [], "sum": ["description"]}}, "fused with 'sum' (description)"),
        ({"fuser": {"cross": [], "input_interpolate": ["description"]}}, "fused with 'input_interpolate'"),
        ({"transformer_lm": {"two_step_cfg": True}}, "two-pass classifier-free guidance (two_step_cfg: true)"),
    ],
)
def test_unsupported_features_are_named(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ModelLoadError, match=r"^This checkpoint uses ") as refused:
        check_supported(_lm(overrides))
    assert named in str(refused.value)


async def test_the_engine_says_why_a_checkpoint_is_refused_not_that_the_prompt_failed(tmp_path: Path) -> None:
    from generation.jobs import JobRequest
    from generation.settings import EngineSettings
    from generation.worker import Engine

    plain = {"transformer_lm": {"custom": False, "memory_efficient": False}}
    model_dir = write_random_checkpoint(tmp_path, overrides=plain)
    async with Engine(EngineSettings(device="cpu", model=str(model_dir))) as engine:  # type: ignore[call-arg]
        outcome = await engine.submit(JobRequest.create(prompt="calm piano", model=str(model_dir))).outcome()
    reason = getattr(outcome, "reason", "")
    assert "plain attention" in reason and "memory_efficient: true" in reason
    assert "failed on this prompt" not in reason
