"""AnomalyGPT's two pixel maps: decoder x text (zero-shot) and reference memory (few-shot)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

TEXT_LOGIT_SCALE = 100.0
"""Fixed scale of the zero-shot cosine logits (not ImageBind's learned one)."""


class AnomalyDecoder(nn.Module):
    """One ``Linear(width -> D)`` per tap, mapping patch tokens into the text space."""

    def __init__(self, num_layers: int, in_width: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(in_width, out_dim) for _ in range(num_layers))

    def forward(self, patch_tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Project each tap's ``(B, N, W)`` tokens to ``(B, N, D)``."""
        return [fc(tokens) for fc, tokens in zip(self.fc, patch_tokens, strict=True)]


def _to_grid(values: torch.Tensor) -> torch.Tensor:
    """``(..., N, C)`` token values -> ``(..., C, g, g)`` on the row-major patch grid."""
    grid = round(values.shape[-2] ** 0.5)
    return values.transpose(-1, -2).unflatten(-1, (grid, grid))


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=True)


def zero_shot_logits(decoded_tokens: Sequence[torch.Tensor], text_features: torch.Tensor) -> torch.Tensor:
    """Per tap, ``100 x cos(token, [normal, abnormal])`` on the patch grid: ``(L, B, 2, g, g)``."""
    text = text_features.to(decoded_tokens[0].dtype)
    logits = [TEXT_LOGIT_SCALE * F.normalize(tokens, dim=-1) @ text.t() for tokens in decoded_tokens]
    return torch.stack([_to_grid(layer) for layer in logits])


def zero_shot_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """Per tap, upsample the LOGITS, then softmax over [normal, abnormal]: ``L x (B, 2, H, W)``."""
    return [_upsample(layer, size).softmax(dim=1) for layer in logits]


def zero_shot_map(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mean over taps of the abnormal probability: ``(B, 1, H, W)``."""
    return torch.stack([layer[:, 1:] for layer in zero_shot_probabilities(logits, size)]).mean(dim=0)


def normalise_memory(patch_tokens: Sequence[torch.Tensor]) -> torch.Tensor:
    """Reference memory from each tap's ``(k, N, W)`` tokens: unit rows, ``(L, k*N, W)``."""
    return torch.stack([F.normalize(tokens.flatten(0, 1), dim=-1, eps=1e-8) for tokens in patch_tokens])


def few_shot_similarity(patch_tokens: Sequence[torch.Tensor], memory: torch.Tensor) -> torch.Tensor:
    """Per tap and query patch, max cosine similarity to the reference memory: ``(L, B, N)``."""
    return torch.stack(
        [
            (F.normalize(tokens, dim=-1, eps=1e-8) @ layer_memory.to(tokens.dtype).t()).amax(dim=-1)
            for tokens, layer_memory in zip(patch_tokens, memory, strict=True)
        ],
    )


def few_shot_map(similarity: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``1 - upsample(mean over taps of the max similarity)``: ``(B, 1, H, W)``."""
    mean = similarity.mean(dim=0).unsqueeze(-1)  # (B, N, 1)
    return 1.0 - _upsample(_to_grid(mean), size)
