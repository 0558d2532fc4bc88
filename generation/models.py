"""Model names: what users type, and what audiocraft loads. No torch here."""

from __future__ import annotations

from pathlib import Path

HUB_MODELS = (
    "facebook/musicgen-small",
    "facebook/musicgen-medium",
    "facebook/musicgen-large",
    "facebook/musicgen-melody",
    "facebook/musicgen-stereo-small",
    "facebook/musicgen-stereo-medium",
    "facebook/musicgen-stereo-large",
    "facebook/musicgen-stereo-melody",
    "facebook/musicgen-stereo-melody-large",
)
DEFAULT_MODEL = "facebook/musicgen-small"


def resolve_model_id(name: str) -> str:
    """``small`` -> ``facebook/musicgen-small``; hub ids pass through; local directories become absolute."""
    name = name.strip()
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    short = f"facebook/musicgen-{name}"
    return short if short in HUB_MODELS else name
