"""Shared set-up of the benchmarks: the reference set, and random explanation heads of other sizes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

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
