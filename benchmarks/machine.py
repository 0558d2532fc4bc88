"""What every benchmark prints first: the CPU it ran on (results differ between CPUs), cores and torch threads."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``unknown CPU`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def describe_machine() -> str:
    import torch

    return f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads"
