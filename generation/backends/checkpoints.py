"""Random-weight MusicGen checkpoints in audiocraft's export format.

No weights can be downloaded here, so tests, benchmarks and the offline demo build
models with audiocraft's own builders and save them the way ``MusicGen.get_pretrained``
loads a local directory: ``state_dict.bin`` (the LM) and ``compression_state_dict.bin``
(EnCodec), each ``{"xp.cfg": <yaml>, "best_state": <state_dict>}``.

The configs follow audiocraft 1.3.0's ``config/`` tree (``model/lm/musicgen_lm.yaml``,
``model/encodec/encodec_large_nq4_s640.yaml``, ``solver/musicgen/musicgen_base_32khz.yaml``,
``conditioner/text2music.yaml``), with the T5 text encoder, which needs the hub,
replaced by audiocraft's look-up-table conditioner.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

Scale = Literal["tiny", "small"]
Tokenizer = Literal["noop", "whitespace"]

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


def checkpoint_config(scale: Scale = "tiny", tokenizer: Tokenizer = "noop", card: int = 2048) -> dict[str, Any]:
    """The full config of a MusicGen text-to-music model at ``scale``."""
    cfg = copy.deepcopy(_BASE)
    cfg["transformer_lm"].update(_LM_SCALES[scale], card=card)
    cfg["rvq"]["bins"] = card
    cfg["seanet"].update(_SEANET_SCALES[scale])
    lut = cfg["conditioners"]["description"]["lut"]
    lut["tokenizer"] = tokenizer
    if scale == "small":
        lut["dim"] = 768  # T5-base's width
    return cfg


def write_random_checkpoint(
    directory: Path, scale: Scale = "tiny", tokenizer: Tokenizer = "noop", seed: int = 0, card: int = 2048
) -> Path:
    """Build a model with random weights at ``scale`` and save it where ``get_pretrained(directory)`` finds it."""
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cfg = checkpoint_config(scale, tokenizer, card)
    torch.manual_seed(seed)
    omega = OmegaConf.create(cfg)
    lm = builders.get_lm_model(omega)
    compression = builders.get_compression_model(omega)
    yaml = OmegaConf.to_yaml(omega)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": yaml, "best_state": lm.state_dict()}, directory / "state_dict.bin")
    torch.save({"xp.cfg": yaml, "best_state": compression.state_dict()}, directory / "compression_state_dict.bin")
    return directory
