"""Every MusicGen variant's tiny checkpoint loads and generates through stock audiocraft, offline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from audiocraft.models import MusicGen
from audiocraft.models.encodec import EncodecModel, InterleaveStereoCompressionModel
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

SAMPLE_RATE = 32000
CHROMA_FRAMES = math.ceil(30 * SAMPLE_RATE / 2**14 * 4)  # 30 s of chroma, hop 2**14 / 4: 235 frames


def _load(model_dir: Path, duration: float = 0.5) -> MusicGen:
    model = MusicGen.get_pretrained(str(model_dir), device="cpu")
    model.set_generation_params(duration=duration)
    return model


def _melody(seconds: float = 1.5) -> torch.Tensor:
    """A scale of sine notes (C E G A B C), mono [1, samples] at 32 kHz."""
    notes = [261.63, 329.63, 392.0, 440.0, 493.88, 523.25]
    per_note = int(seconds * SAMPLE_RATE / len(notes))
    t = torch.arange(per_note) / SAMPLE_RATE
    return (torch.cat([torch.sin(2 * math.pi * f * t) for f in notes]) * 0.5)[None]


def test_stereo_interleaves_eight_streams_into_two_channels(tiny_stereo_model_dir: Path) -> None:
    model = _load(tiny_stereo_model_dir)
    assert isinstance(model.compression_model, InterleaveStereoCompressionModel)
    assert isinstance(model.compression_model.model, EncodecModel)
    assert model.compression_model.model.num_codebooks == 4
    assert (model.lm.n_q, model.compression_model.num_codebooks, model.audio_channels) == (8, 8, 2)
    assert model.lm.pattern_provider.delays == [0, 0, 1, 1, 2, 2, 3, 3]

    torch.manual_seed(0)
    wav = model.generate(["calm piano", "fast drums"])

    assert wav.shape == (2, 2, SAMPLE_RATE // 2)
    assert not torch.equal(wav[:, 0], wav[:, 1]), "left and right come from different codebooks"


def test_mono_stays_mono(tiny_model_dir: Path) -> None:
    model = _load(tiny_model_dir)
    assert isinstance(model.compression_model, EncodecModel)
    assert model.generate(["calm piano"]).shape == (1, 1, SAMPLE_RATE // 2)


@pytest.mark.parametrize("fixture, channels", [("tiny_melody_model_dir", 1), ("tiny_stereo_melody_model_dir", 2)])
def test_melody_models_generate_with_text_only_and_with_a_melody(
    fixture: str, channels: int, request: pytest.FixtureRequest, offline_demucs: None
) -> None:
    model = _load(request.getfixturevalue(fixture))
    assert model.lm.fuser.fuse2cond["prepend"] == ["self_wav", "description"]
    assert model.lm.fuser.fuse2cond["cross"] == []
    assert all(layer.cross_attention is None for layer in model.lm.transformer.layers)

    torch.manual_seed(0)
    text_only = model.generate(["calm piano", "fast drums"])
    with_melody = model.generate_with_chroma(["calm piano"], _melody()[None], SAMPLE_RATE)

    assert text_only.shape == (2, channels, SAMPLE_RATE // 2)
    assert with_melody.shape == (1, channels, SAMPLE_RATE // 2)


@pytest.mark.parametrize("with_melody", [True, False])
def test_melody_conditions_are_prepended_chroma_first_then_text(
    tiny_melody_model_dir: Path, offline_demucs: None, with_melody: bool
) -> None:
    """The layout stock audiocraft feeds the LM for one prompt and its null (CFG) row."""
    model = _load(tiny_melody_model_dir)
    lm = model.lm
    melodies = [_melody()] if with_melody else None
    attributes, _ = model._prepare_tokens_and_attributes(["calm piano"], None, melody_wavs=melodies)
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)

    conditions = lm.condition_provider(lm.condition_provider.tokenize(attributes + null))
    prefix, cross = lm.fuser(torch.zeros(2, 0, lm.dim), conditions)

    chroma, chroma_mask = conditions["self_wav"]
    text, text_mask = conditions["description"]
    assert list(conditions) == ["description", "self_wav"]  # each later prepend goes in front
    assert chroma.shape == (2, CHROMA_FRAMES, lm.dim)  # always padded (tiled) to 30 s, unmasked
    assert chroma_mask.tolist() == [[1] * CHROMA_FRAMES] * 2
    assert text.shape == (2, 1, lm.dim)  # the noop tokenizer: one token
    assert text_mask.tolist() == [[1], [0]]
    assert torch.equal(text[1], torch.zeros_like(text[1])), "the null text is zeros, and still takes a position"
    assert cross is None
    assert prefix.shape == (2, CHROMA_FRAMES + 1, lm.dim)
    assert torch.equal(prefix, torch.cat([chroma, text], dim=1))
    # the null row's chroma is that of silence, which is also the text-only prompt's chroma
    assert torch.equal(chroma[0], chroma[1]) is not with_melody
