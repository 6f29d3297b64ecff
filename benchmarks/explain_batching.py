"""Batched vs one-by-one explanations: images per second at batch 8, same answers.

    python benchmarks/explain_batching.py [--batch 8] [--tokens 24] [--rounds 3] [--warmup 1]

Two LLM sizes: the reference set's tiny LLaMA and a ~100M-parameter random LLaMA. Prints the
speed-up of one batched ``generate`` over answering each image alone (goal: >= 2x), as the ratio of
the medians of ``--rounds`` round-robin rounds (batched, one-by-one, batched, ...), so that a change
of machine load hits both alike; a speed-up above the batch size means the load moved, not the code.
Last line is the figure.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _setup import fixture_weights, random_llm_weights, round_robin, rounds_note, synchronizer


def measure(weights: dict, args: argparse.Namespace) -> tuple[dict, int]:
    """(round-robin timings of ``batched`` and ``one-by-one``, parameters of the LLM)."""
    from anomalib_agpt import AnomalyGPT
    from anomalib_agpt.module.legacy_options import group_flat_options

    options = {**weights, "explain": True, "max_new_tokens": args.tokens, "class_name": "bottle"}
    model = AnomalyGPT(**group_flat_options(options))
    model = model.to(args.device).eval()
    head = model.model.ensure_llm_head()
    parameters = sum(p.numel() for p in head.llm.parameters())
    images = torch.randn(args.batch, 3, 224, 224, device=args.device)
    timings = round_robin(
        {
            "batched": lambda: model.model.explain(images),
            "one-by-one": lambda: [model.model.explain(images[i : i + 1])[0] for i in range(args.batch)],
        },
        rounds=args.rounds,
        warmup=args.warmup,
        sync=synchronizer(args.device),
    )
    if timings["batched"].result != timings["one-by-one"].result:
        print("  note: batched and one-by-one answers differ (numerical ties)")
    return timings, parameters


def main() -> None:
    """Run both sizes and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"{args.device}, batch {args.batch}, {args.tokens} new tokens; {rounds_note(args.rounds, args.warmup)}")
    with tempfile.TemporaryDirectory() as folder:
        setups = {
            "reference-set LLaMA": fixture_weights(),
            "random LLaMA ~100M": random_llm_weights(Path(folder), hidden=768, layers=12, heads=12, mlp=2560),
        }
        figures = []
        for name, weights in setups.items():
            timings, parameters = measure(weights, args)
            batched, single = timings["batched"], timings["one-by-one"]
            speed_up = single.median / batched.median
            figures.append(f"{name} ({parameters / 1e6:.1f}M): {speed_up:.2f}x")
            print(f"{name} ({parameters / 1e6:.1f}M params)")
            print(f"  {'batched':12s} {batched.rate(args.batch)}")
            print(f"  {'one-by-one':12s} {single.rate(args.batch)}")
            print(f"  speed-up (ratio of medians) {speed_up:.2f}x")
    print(f"batched vs one-by-one explanation speed-up at batch {args.batch}: " + "; ".join(figures))


if __name__ == "__main__":
    main()
