"""Deprecated: kept only until the decoder calls :mod:`generation.backends.precision`.

``decoder.py``, ``self_attention.py`` and ``cross_attention.py`` still import :func:`linear`
and :func:`install` from here; they behave as before (``F.linear`` below :data:`MIN_ROWS`
rows, the swapped form from there on), computed by :func:`precision.linear`.

This fixed threshold gives no row class: with MKL at 2 threads the swapped form gives a
row the same bits only from 12 rows on (at 4-11 rows, counts 5-7 differ), and ``F.linear``
only from 12 rows or at multiples of 4. Use :func:`precision.apply_precision`, whose plan
measures the form and says how to pad the rows (``plan.linear.padded_rows``).
"""

from __future__ import annotations

import torch
from torch import nn

from generation.backends import precision

MIN_ROWS = 4


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    return precision.linear(x, weight, bias, "linear" if rows < MIN_ROWS else "swapped")


class RowAwareLinear(nn.Module):
    """Wraps an ``nn.Linear`` (same parameters) to compute it with :func:`linear`."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.inner.weight, self.inner.bias)


def install(module: nn.Module) -> int:
    """Wrap every ``nn.Linear`` under ``module``; returns how many were wrapped."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, RowAwareLinear(child))
                count += 1
    return count
