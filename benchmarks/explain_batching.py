"""Batched vs one-by-one explanations: images per second at batch 8, same answers.

    python benchmarks/explain_batching.py [--batch 8] [--tokens 24]

Two LLM sizes: the reference set's tiny LLaMA and a ~100M-parameter random LLaMA. Prints the
speed-up of one batched ``generate`` over answering each image alone (goal: >= 2x); last line is
the figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _setup import fixture_weights, random_llm_weights


def measure(weights: dict, batch: int, tokens: int, device: str) -> tuple[float, float, int]:
    """(batched images/s, one-by-one images/s, parameters of the LLM)."""
    from anomalib_agpt import AnomalyGPT

    model = AnomalyGPT(**weights, explain=True, max_new_tokens=tokens, class_name="bottle").to(device).eval()
    head = model.model.ensure_llm_head()
    parameters = sum(p.numel() for p in head.llm.parameters())
    images = torch.randn(batch, 3, 224, 224, device=device)
    model.model.explain(images[:2])  # warm-up
    start = time.perf_counter()
    batched = model.model.explain(images)
    batched_rate = batch / (time.perf_counter() - start)
    start = time.perf_counter()
    single = [model.model.explain(images[i : i + 1])[0] for i in range(batch)]
    single_rate = batch / (time.perf_counter() - start)
    if batched != single:
        print("  note: batched and one-by-one answers differ (numerical ties)")
    return batched_rate, single_rate, parameters


def main() -> None:
    """Run both sizes and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        setups = {
            "reference-set LLaMA": fixture_weights(),
            "random LLaMA ~100M": random_llm_weights(Path(folder), hidden=768, layers=12, heads=12, mlp=2560),
        }
        figures = []
        for name, weights in setups.items():
            batched, single, parameters = measure(weights, args.batch, args.tokens, args.device)
            figures.append(f"{name} ({parameters / 1e6:.1f}M): {batched / single:.2f}x")
            print(
                f"{name:22s} {parameters / 1e6:7.1f}M params  batched {batched:7.2f} img/s  "
                f"one-by-one {single:7.2f} img/s  speed-up {batched / single:.2f}x ({args.device})",
            )
    print(f"batched vs one-by-one explanation speed-up at batch {args.batch}: " + "; ".join(figures))


if __name__ == "__main__":
    main()
