"""Per-job token sampling: audiocraft's strategies, each job on its own ``torch.Generator``.

The operations mirror ``audiocraft.models.lm.LMModel._sample_next_token`` and
``audiocraft.utils.utils.sample_top_k/top_p`` step for step, so a job sampled here
with generator seeded ``s`` draws exactly what stock audiocraft draws for a lone
prompt under ``torch.manual_seed(s)``.
"""

from __future__ import annotations

import torch

from generation.jobs import SamplingParams


def _multinomial(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flat = probs.reshape(-1, probs.shape[-1])
    drawn = torch.multinomial(flat, num_samples=1, generator=generator)
    return drawn.reshape(*probs.shape[:-1], 1)


def _top_k(probs: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    top_values, _ = torch.topk(probs, min(k, probs.shape[-1]), dim=-1)
    probs *= (probs >= top_values[..., [-1]]).float()
    probs.div_(probs.sum(dim=-1, keepdim=True))
    return _multinomial(probs, generator)


def _top_p(probs: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    mask = torch.cumsum(probs_sort, dim=-1) - probs_sort > p
    probs_sort *= (~mask).float()
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    return torch.gather(probs_idx, -1, _multinomial(probs_sort, generator))


def sample_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """``logits`` [1, K, card] (after guidance) -> next tokens [1, K, 1]."""
    if params.temperature <= 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p > 0.0:
        return _top_p(probs, params.top_p, generator)
    if params.top_k > 0:
        return _top_k(probs, params.top_k, generator)
    return _multinomial(probs, generator)
