"""Few-shot cost: per-query time of the scores path for k = 0, 1, 2, 4, 8, 16 reference images.

    python benchmarks/few_shot_cost.py [--size small|huge] [--shots 0 1 2 4 8 16] [--batch 4] [--rounds 3]

The memory is set once per k with ``model.set_references(torch.randn(k, 3, 224, 224))``; then each
query batch goes through ``model(images)``. A forward hook on ``model.vision_encoder`` counts the
encoder calls and the images each call sees: a query must trigger exactly ONE encoder call on its own
images, whatever k (references are never re-encoded), so the per-query encoder cost stays flat.
What grows with k is the memory comparison (``anomaly_maps.few_shot_similarity``, timed
separately, round-robin with the query and the encoder alone over ``--rounds`` rounds); the figure is
its median's share of the per-query median. Sizes as in ``scores_vs_open_clip.py``
(``small``: 768 wide, 12 layers; ``huge``: ImageBind-Huge's 1280/32). Last line is the figure.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from _setup import VISION_SIZES, Timing, random_sized_model, round_robin, rounds_note, synchronizer
from torch import nn

from anomalib_agpt.model.anomaly_maps import few_shot_similarity


class EncoderCalls:
    """Forward hook: how many times the encoder ran, and on how many images each time."""

    def __init__(self, encoder: nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = encoder.register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:  # noqa: ANN401
        """Record one call and its batch size."""
        self.batches.append(int(inputs[0].shape[0]))


def main() -> None:
    """Time the scores path and the memory comparison for each k and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(VISION_SIZES), default="small")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    parser.add_argument("--batch", type=int, default=4, help="query images per call")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds per k")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = random_sized_model(args.size).to(args.device)
    queries = torch.randn(args.batch, 3, 224, 224, device=args.device)
    calls = EncoderCalls(model.vision_encoder)
    with torch.no_grad():
        features = model.vision_encoder(queries)

    def timed(**contenders: Callable[[], object]) -> dict[str, Timing]:
        """Round-robin timings of the contenders, without autograd."""
        with torch.no_grad():
            return round_robin(contenders, args.rounds, args.warmup, sync=synchronizer(args.device))

    print(f"sizes: {args.size} {VISION_SIZES[args.size]}, {args.batch} queries per call, {args.device}")
    print(f"{rounds_note(args.rounds, args.warmup)}; per-query medians, min-max of the whole query in brackets")
    print(
        f"{'k':>3s} {'ms/query (min-max)':>25s} {'encoder ms':>11s} {'encoder share':>14s} {'memory cmp ms':>14s} "
        f"{'share':>6s} {'encoder calls/query':>20s}"
    )
    encoder_calls_ok = True
    share = 0.0
    for k in args.shots:
        if k:
            model.set_references(torch.randn(k, 3, 224, 224, device=args.device))
        else:
            model.reference_memory = model.reference_memory[:, :0]
        assert model.num_reference_images == k
        calls.batches.clear()
        with torch.no_grad():
            model(queries)
        seen = list(calls.batches)
        encoder_calls_ok &= seen == [args.batch]
        timings = timed(
            query=lambda: model(queries),
            encoder=lambda: model.vision_encoder(queries),
            memory=lambda k=k: few_shot_similarity(features.patch_tokens, model.reference_memory) if k else None,
        )
        per_query, encoder, memory = (timing.median / args.batch for timing in timings.values())
        low, high = (1000 * value / args.batch for value in (timings["query"].low, timings["query"].high))
        share = memory / per_query if k else 0.0
        print(
            f"{k:3d} {1000 * per_query:9.1f} ({low:6.1f}-{high:6.1f}) {1000 * encoder:11.1f} "
            f"{100 * encoder / per_query:13.1f}% {1000 * memory if k else 0.0:14.2f} {100 * share:5.1f}% "
            f"{len(seen):>10d} (on {seen[0]} images)",
        )
    calls.handle.remove()
    verdict = "1 for every k" if encoder_calls_ok else "NOT 1 for every k (references re-encoded?)"
    print(f"encoder calls per query: {verdict}; memory comparison share at k={args.shots[-1]}: {100 * share:.1f}%")


if __name__ == "__main__":
    main()
