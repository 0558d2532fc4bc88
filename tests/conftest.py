"""Shared fixtures: tiny MusicGen checkpoints built with audiocraft's own builders."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from generation.backends.checkpoints import write_random_checkpoint
from tests.bot_harness import World, make_world
from tests.fakes.discord import FakeDiscord

warnings.filterwarnings("ignore", message=".*weight_norm is deprecated.*")


@pytest.fixture(scope="session", autouse=True)
def offline_whitespace_tokenizer() -> None:
    """audiocraft's whitespace tokenizer wants spaCy's en_core_web_sm, which is not on PyPI.

    spaCy's blank English pipeline tokenizes offline, so prompts get different token lengths.
    """
    from audiocraft.modules.conditioners import WhiteSpaceTokenizer

    init = WhiteSpaceTokenizer.__init__
    defaults = init.__defaults__ or ()
    init.__defaults__ = tuple("blank:en" if value == "en_core_web_sm" else value for value in defaults)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-to-music checkpoint: prompts are hashed to one token (noop tokenizer)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-musicgen"), scale="tiny", tokenizer="noop")


@pytest.fixture(scope="session")
def tiny_words_model_dir(tmp_path_factory: pytest.TempPathFactory, offline_whitespace_tokenizer: None) -> Path:
    """A tiny checkpoint whose prompts are one token per word, so a batch's texts have different lengths."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-musicgen-words"), tokenizer="whitespace", seed=1)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """A fake Discord with one guild (channels jam and general; alice, bob and a moderator)."""
    async with FakeDiscord() as fake:
        yield make_world(fake)
        assert fake.validation_errors == [], "the bot sent requests Discord's OpenAPI description refuses"
