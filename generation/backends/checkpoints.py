"""Random-weight MusicGen checkpoints in audiocraft's export format.

No weights can be downloaded here, so tests, benchmarks and the offline demo build
models with audiocraft's own builders and save them the way ``MusicGen.get_pretrained``
loads a local directory: ``state_dict.bin`` (the LM) and ``compression_state_dict.bin``
(EnCodec), each ``{"xp.cfg": <yaml>, "best_state": <state_dict>}``.

The configs follow audiocraft 1.3.0's ``config/`` tree (``model/lm/musicgen_lm.yaml``,
``model/encodec/encodec_large_nq4_s640.yaml``, ``solver/musicgen/musicgen_base_32khz.yaml``,
``conditioner/text2music.yaml``), with the T5 text encoder, which needs the hub,
replaced by audiocraft's look-up-table conditioner.

Every released variant can be built (``variant``):

- ``mono``: ``musicgen-small/medium/large``, text to music through cross-attention.
- ``stereo``: ``musicgen-stereo-*``. The LM models 8 streams, the codebooks of the left
  and right channels interleaved (``L0 R0 L1 R1 ...``, delays ``[0, 0, 1, 1, 2, 2, 3, 3]``);
  the compression model stays the mono 4-codebook EnCodec. ``MusicGen.__init__`` wraps it
  in ``InterleaveStereoCompressionModel`` because the LM's config has
  ``interleave_stereo_codebooks.use: true`` (``builders.get_wrapped_compression_model``).
- ``melody``: ``musicgen-melody`` (``conditioner/chroma2music.yaml``). A ``self_wav``
  chroma conditioner (audiocraft's ``ChromaStemConditioner``, which loads demucs'
  pretrained ``htdemucs``) and the description are both prepended to the LM's input;
  there is no cross-attention.
- ``stereo-melody``: ``musicgen-stereo-melody-*``, both of the above.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

Scale = Literal["tiny", "small"]
Tokenizer = Literal["noop", "whitespace"]
Variant = Literal["mono", "stereo", "melody", "stereo-melody"]
VARIANTS: tuple[Variant, ...] = ("mono", "stereo", "melody", "stereo-melody")

_LM_SCALES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 32, "num_heads": 2, "num_layers": 2},
    "small": {"dim": 1024, "num_heads": 16, "num_layers": 24},  # model_scale/small.yaml
}
_SEANET_SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"dimension": 16, "n_filters": 2, "lstm": 0, "ratios": [8, 5, 4, 4]},
    "small": {"dimension": 128, "n_filters": 64, "lstm": 2, "ratios": [8, 5, 4, 4]},
}

_BASE: dict[str, Any] = {
    "sample_rate": 32000,
    "channels": 1,
    "device": "cpu",
    "dtype": "float32",
    "dataset": {"segment_duration": 30},
    "lm_model": "transformer_lm",
    "codebooks_pattern": {
        "modeling": "delay", "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0},
    },
    "transformer_lm": {
        "n_q": 4, "card": 2048, "hidden_scale": 4, "dropout": 0.0, "emb_lr": None, "activation": "gelu",
        "norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False, "past_context": None,
        "causal": True, "custom": False, "memory_efficient": True, "attention_as_float32": False,
        "layer_scale": None, "positional_embedding": "sin", "xpos": False, "checkpointing": "none",
        "weight_init": "gaussian", "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm",
        "cross_attention": False, "qk_layer_norm": False, "qk_layer_norm_cross": False,
        "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False,
    },
    "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
    "attribute_dropout": {},
    "fuser": {
        "cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
        "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": [],
    },
    "conditioners": {"description": {"model": "lut", "lut": {"n_bins": 4096, "dim": 64, "tokenizer": "noop"}}},
    "compression_model": "encodec",
    "encodec": {
        "autoencoder": "seanet", "quantizer": "rvq", "sample_rate": 32000, "channels": 1,
        "causal": False, "renormalize": False,
    },
    "seanet": {
        "channels": 1, "causal": False, "n_residual_layers": 1, "activation": "ELU",
        "activation_params": {"alpha": 1.0}, "norm": "weight_norm", "norm_params": {}, "kernel_size": 7,
        "residual_kernel_size": 3, "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant",
        "true_skip": True, "compress": 2, "disable_norm_outer_blocks": 0,
        "decoder": {"trim_right_ratio": 1.0, "final_activation": None, "final_activation_params": None},
        "encoder": {},
    },
    "rvq": {
        "n_q": 4, "q_dropout": False, "bins": 2048, "decay": 0.99, "kmeans_iters": 50,
        "kmeans_init": False,  # random codebooks: with k-means init they stay zero until trained
        "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False,
    },
}


# musicgen-stereo-*: what audiocraft's grids/musicgen/musicgen_stereo_finetune_32khz.py sets.
_STEREO: dict[str, Any] = {
    "channels": 2,
    "interleave_stereo_codebooks": {"use": True, "per_timestep": False},
    "transformer_lm": {"n_q": 8},
    "codebooks_pattern": {"delay": {"delays": [0, 0, 1, 1, 2, 2, 3, 3]}},
}

# musicgen-melody: config/conditioner/chroma2music.yaml, with the T5 description kept as a look-up table.
_MELODY: dict[str, Any] = {
    "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 3.0},
    "attribute_dropout": {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}},
    "fuser": {"sum": [], "prepend": ["self_wav", "description"], "cross": [], "input_interpolate": []},
    "conditioners": {
        "self_wav": {
            "model": "chroma_stem",
            "chroma_stem": {
                "sample_rate": 32000, "n_chroma": 12, "radix2_exp": 14, "argmax": True,
                "match_len_on_eval": False, "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None,
            },
        },
    },
}

_VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {
    "mono": (),
    "stereo": (_STEREO,),
    "melody": (_MELODY,),
    "stereo-melody": (_STEREO, _MELODY),
}


def _merge(into: dict[str, Any], changes: Mapping[str, Any]) -> None:
    """Deep-merge ``changes`` into ``into``: mappings are merged key by key, anything else replaced."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def checkpoint_config(
    scale: Scale = "tiny",
    tokenizer: Tokenizer = "noop",
    card: int = 2048,
    variant: Variant = "mono",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full config of a MusicGen ``variant`` at ``scale`` (the LM's ``xp.cfg``).

    ``overrides`` is deep-merged last, e.g. ``{"transformer_lm": {"memory_efficient": False}}``.
    """
    cfg = copy.deepcopy(_BASE)
    cfg["transformer_lm"].update(_LM_SCALES[scale], card=card)
    cfg["rvq"]["bins"] = card
    cfg["seanet"].update(_SEANET_SCALES[scale])
    lut = cfg["conditioners"]["description"]["lut"]
    lut["tokenizer"] = tokenizer
    if scale == "small":
        lut["dim"] = 768  # T5-base's width
    for changes in _VARIANTS[variant]:
        _merge(cfg, changes)
    if overrides:
        _merge(cfg, overrides)
    return cfg


def compression_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The compression model's config for an LM config: always the mono EnCodec, never interleaved."""
    out = copy.deepcopy(dict(cfg))
    out["channels"] = out["encodec"]["channels"]
    out.pop("interleave_stereo_codebooks", None)
    return out


def write_random_checkpoint(
    directory: Path,
    scale: Scale = "tiny",
    tokenizer: Tokenizer = "noop",
    seed: int = 0,
    card: int = 2048,
    variant: Variant = "mono",
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Build a model with random weights at ``scale`` and save it where ``get_pretrained(directory)`` finds it.

    Melody variants build audiocraft's ``ChromaStemConditioner``, which loads demucs'
    pretrained ``htdemucs``: offline, patch ``demucs.pretrained.get_model`` first (tests do).
    """
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cfg = checkpoint_config(scale, tokenizer, card, variant, overrides)
    torch.manual_seed(seed)
    lm_cfg = OmegaConf.create(cfg)
    compression_cfg = OmegaConf.create(compression_config(cfg))
    lm = builders.get_lm_model(lm_cfg)
    compression = builders.get_compression_model(compression_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": OmegaConf.to_yaml(lm_cfg), "best_state": lm.state_dict()}, directory / "state_dict.bin")
    torch.save(
        {"xp.cfg": OmegaConf.to_yaml(compression_cfg), "best_state": compression.state_dict()},
        directory / "compression_state_dict.bin",
    )
    return directory
