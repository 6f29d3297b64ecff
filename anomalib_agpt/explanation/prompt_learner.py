"""AnomalyGPT's prompt learner: the anomaly map becomes 9 LLM tokens after 9 learned ones."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from anomalib_agpt.weights.checkpoints import CheckpointError

ORIGINAL_BASE_PROMPT_STD = 1.0
"""The original draws its base prompts from a standard normal (the from-scratch training path does too)."""
FRESH_BASE_PROMPT_STD = 0.02
"""Base prompts of a prompt learner made for another LLM (:meth:`PromptLearner.fresh`)."""


def _conv_shapes(state: Mapping[str, torch.Tensor], source: Path | str) -> list[tuple[int, int, int]]:
    """``(out, in, kernel)`` of each ``meta_net.N`` convolution, in order."""
    indices = sorted(int(k.split(".")[1]) for k in state if k.startswith("meta_net.") and k.endswith(".weight"))
    if not indices or "base_prompts" not in state:
        msg = f"AnomalyGPT delta '{source}' has no prompt_learner.meta_net.N.weight / prompt_learner.base_prompts."
        raise CheckpointError(msg)
    return [tuple(state[f"meta_net.{i}.weight"].shape[:3]) for i in indices]  # type: ignore[misc]


class PromptLearner(nn.Module):
    """Conv(3x3)-ReLU-MaxPool stages down to 7x7, a 5x5 conv to ``hidden`` x 3 x 3, after ``base_prompts``.

    Sizes (channels, hidden size, number of base prompts) come from the checkpoint; the layer
    indices match the original's ``meta_net`` (conv, relu, pool, conv, ...).
    """

    def __init__(self, conv_shapes: list[tuple[int, int, int]], num_base_prompts: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (out_channels, in_channels, kernel) in enumerate(conv_shapes):
            last = index == len(conv_shapes) - 1
            layers.append(nn.Conv2d(in_channels, out_channels, kernel, padding=0 if last else kernel // 2))
            if not last:
                layers += [nn.ReLU(), nn.MaxPool2d(2)]
        self.meta_net = nn.Sequential(*layers)
        self.base_prompts = nn.Parameter(torch.zeros(num_base_prompts, conv_shapes[-1][0]))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: Path | str) -> PromptLearner:
        """Build with the checkpoint's sizes (the caller loads the weights strictly)."""
        return cls(_conv_shapes(state, source), state["base_prompts"].shape[0])

    @classmethod
    def fresh(cls, hidden_size: int, num_base_prompts: int = 9, map_sensitive: bool = False) -> PromptLearner:
        """A newly initialised prompt learner of the original's shape, for another LLM.

        ``map_sensitive``: He-initialised convolutions with zero biases, so an all-normal map (zeros) gives
        zero tokens and a defect's blob tokens about a word embedding's size. PyTorch's default init (the
        original's) gives tokens dominated by the biases: after the demo's 60 steps on SmolLM2 they varied
        by 0.5 % of their size between images, too little for the LLM to read, and every answer was the same.
        """
        channels = (1, 4, 16, 64, 256, 1024)
        shapes = [(out, inp, 3) for inp, out in pairwise(channels)] + [(hidden_size, channels[-1], 5)]
        learner = cls(shapes, num_base_prompts)
        nn.init.normal_(learner.base_prompts, std=FRESH_BASE_PROMPT_STD)
        if map_sensitive:
            for layer in learner.meta_net:
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        return learner

    @torch.no_grad()
    def draw_base_prompts(self, seed: int, std: float = ORIGINAL_BASE_PROMPT_STD) -> None:
        """Redraw the base prompts from ``N(0, std^2)`` (float32 on the CPU, from a generator seeded by ``seed``).

        The values are ``torch.randn(num_base_prompts, hidden, generator=torch.Generator().manual_seed(seed)) * std``
        cast to the prompts' dtype and device, whatever those are.
        """
        generator = torch.Generator().manual_seed(seed)
        values = torch.randn(self.base_prompts.shape, generator=generator) * std
        self.base_prompts.copy_(values.to(self.base_prompts))

    @property
    def hidden_size(self) -> int:
        """Width of the produced tokens (the LLM's hidden size)."""
        return self.base_prompts.shape[1]

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 224, 224)`` map -> ``(B, base + 9, hidden)`` prompt tokens (grid tokens row-major)."""
        grid = self.meta_net(anomaly_map.to(self.base_prompts.dtype))  # (B, hidden, 3, 3)
        map_prompts = grid.flatten(2).transpose(1, 2)
        base = self.base_prompts.unsqueeze(0).expand(anomaly_map.shape[0], -1, -1)
        return torch.cat([base, map_prompts], dim=1)
