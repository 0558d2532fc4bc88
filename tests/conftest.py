"""Shared fixtures: tiny MusicGen checkpoints built with audiocraft's own builders."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from generation.backends.base import Backend
from generation.backends.checkpoints import write_random_checkpoint
from generation.redis import RedisJobs
from tests.bot_harness import World, fake_world
from tests.helpers import tiny_backend
from tests.redis_server import RedisServer, RedisServerMissing

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
def tiny_loaded_backend(tiny_model_dir: Path) -> Backend:
    """The tiny model, loaded once for the tests that share it (wrap it to record or fail batches)."""
    loaded = tiny_backend(tiny_model_dir)
    loaded.load()
    return loaded


@pytest.fixture(scope="session")
def tiny_words_model_dir(tmp_path_factory: pytest.TempPathFactory, offline_whitespace_tokenizer: None) -> Path:
    """A tiny checkpoint whose prompts are one token per word, so a batch's texts have different lengths."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-musicgen-words"), tokenizer="whitespace", seed=1)


# demucs' random test model for this seed lets a melody through to the chroma. With most
# seeds the untrained decoder's artefact at samplerate/4 = 11025 Hz (about an F) outweighs
# the input, every chroma frame's argmax is F, and the melody (and demucs' random shift)
# cannot show in the condition at all.
DEMUCS_TEST_SEED = 1


@pytest.fixture(scope="session")
def offline_demucs() -> Iterator[None]:
    """``ChromaStemConditioner`` gets demucs' own random ``demucs_unittest`` model instead of downloading htdemucs."""
    import demucs.pretrained
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMUCS_TEST_SEED)
        model = demucs.pretrained.demucs_unittest().eval()

    def get_model(name: str, repo: Path | None = None) -> Any:
        assert name == "htdemucs" and repo is None, f"unexpected demucs model {name!r} (repo {repo})"
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demucs.pretrained, "get_model", get_model)
        yield


@pytest.fixture(scope="session")
def tiny_stereo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny musicgen-stereo: 8 interleaved streams, decoded to 2 channels."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-musicgen-stereo"), variant="stereo", seed=2)


@pytest.fixture(scope="session")
def tiny_melody_model_dir(tmp_path_factory: pytest.TempPathFactory, offline_demucs: None) -> Path:
    """A tiny musicgen-melody: chroma and text prepended, no cross-attention. Load it with ``offline_demucs``."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-musicgen-melody"), variant="melody", seed=3)


@pytest.fixture(scope="session")
def tiny_stereo_melody_model_dir(tmp_path_factory: pytest.TempPathFactory, offline_demucs: None) -> Path:
    """A tiny musicgen-stereo-melody. Load it with ``offline_demucs``."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny-musicgen-stereo-melody"), variant="stereo-melody", seed=4
    )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """A fake Discord with one guild (channels jam and general; alice, bob and a moderator). At teardown the test
    fails if the bot called a route the fake does not serve or sent a body Discord's description refuses."""
    async with fake_world() as world:
        yield world


# -- Redis: one private server per test session, emptied before each test ---------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private ``redis-server`` (127.0.0.1, a free port, AOF on), stopped by its pid at the end."""
    try:
        server = RedisServer.launch(tmp_path_factory.mktemp("redis"))
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the private server, which is emptied (FLUSHALL) first: every test starts clean."""
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def redis_jobs(redis_client: Redis) -> RedisJobs:
    """:class:`RedisJobs` on the emptied server, set up, with the default two attempts."""
    jobs = RedisJobs(redis_client)
    await jobs.setup()
    return jobs
