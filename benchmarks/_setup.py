"""Shared set-up of the benchmarks: the reference set, and random explanation heads of other sizes."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from anomalib_agpt.torch_model import AnomalyGPTModel

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "anomalygpt_reference"
TINY_HEADS = {"vision_heads": 4, "text_heads": 2}
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))


def fixture_weights() -> dict:
    """The reference set's weight files (tiny ImageBind, decoder, prompt learner, LLaMA, LoRA)."""
    return {
        "imagebind_checkpoint": str(FIXTURES / "imagebind.pth"),
        "anomalygpt_checkpoint": str(FIXTURES / "anomalygpt_delta.pt"),
        "llm": str(FIXTURES / "vicuna"),
        "pandagpt_checkpoint": str(FIXTURES / "pandagpt_delta.pt"),
        **TINY_HEADS,
    }


def random_llm_weights(folder: Path, hidden: int, layers: int, heads: int, mlp: int, seed: int = 0) -> dict:
    """The reference set's ImageBind and decoder with a random LLaMA of the given size and its deltas."""
    from anomalib_agpt.presets import (
        LlamaSizes,
        random_pandagpt_delta,
        random_prompt_learner_delta,
        write_random_llama,
    )

    sizes = LlamaSizes(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=mlp, vocab_size=421)
    folder.mkdir(parents=True, exist_ok=True)
    llm = write_random_llama(folder / "llm", sizes, FIXTURES / "vicuna", seed)
    reference = torch.load(FIXTURES / "anomalygpt_delta.pt", weights_only=True)
    decoder = {k: v for k, v in reference.items() if k.startswith("image_decoder.")}
    torch.save(decoder | random_prompt_learner_delta(hidden, seed), folder / "anomalygpt_delta.pt")
    torch.save(random_pandagpt_delta(32, sizes, seed), folder / "pandagpt_delta.pt")
    return {
        "imagebind_checkpoint": str(FIXTURES / "imagebind.pth"),
        "anomalygpt_checkpoint": str(folder / "anomalygpt_delta.pt"),
        "llm": str(llm),
        "pandagpt_checkpoint": str(folder / "pandagpt_delta.pt"),
        **TINY_HEADS,
    }


VISION_SIZES = {"small": (768, 12, 12), "huge": (1280, 32, 16)}
"""``--size`` choices of the encoder benchmarks: (width, layers, heads); ``huge`` is ImageBind-Huge's vision tower."""


def random_sized_model(size: str, seed: int = 0) -> AnomalyGPTModel:
    """An ``AnomalyGPTModel``: random vision tower of ``VISION_SIZES[size]`` (224 px, patch 14), tiny text tower."""
    from anomalib_agpt.presets import PresetSizes, random_anomalygpt_delta, random_imagebind_state_dict
    from anomalib_agpt.torch_model import AnomalyGPTModel

    width, layers, heads = VISION_SIZES[size]
    sizes = PresetSizes(
        vision_width=width,
        vision_layers=layers,
        vision_heads=heads,
        text_width=64,
        text_layers=2,
        text_heads=2,
        embed_dim=1024 if size == "huge" else 512,
    )
    model = AnomalyGPTModel.from_state_dicts(
        random_imagebind_state_dict(sizes, seed),
        random_anomalygpt_delta(sizes, seed),
        vision_heads=heads,
        text_heads=2,
    )
    model.set_class_name("bottle")
    return model.eval()


def median_seconds(function: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``function`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: list[Callable[[], object]], warmup: int, repeats: int) -> list[float]:
    """Median wall time of each function, timed round-robin so that a changing machine load hits all alike."""
    for _ in range(warmup):
        for function in functions:
            function()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, spent in zip(functions, times, strict=True):
            start = time.perf_counter()
            function()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]
