"""AnomalyGPT's scores path vs a bare open_clip ViT forward of the same sizes: throughput ratio.

    python benchmarks/scores_vs_open_clip.py [--size small|huge] [--batch 4] [--rounds 5] [--k-shot 0]

``model.model(images)`` (encoder with its 4 taps, decoder, zero-shot or few-shot map, image score)
against ``open_clip.transformer.VisionTransformer`` of the same width/layers/heads doing a plain
forward, both eval and no_grad, same batch; warm-up, then the median of ``--rounds`` round-robin
rounds (scores, bare, scores, bare, ...: a changing machine load hits both alike), with min-max.
``small`` is ViT-B-ish (768 wide, 12 layers, 224 px, patch 14), ``huge`` ImageBind-Huge's vision
tower (1280/32, slow on a CPU). Goal: scores-path throughput >= 0.9x the bare forward's. Also
prints the share of the scores path spent in the encoder vs the maps. Last line is the figure.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from _setup import VISION_SIZES, random_sized_model, round_robin, rounds_note, synchronizer
from open_clip.transformer import LayerNorm, VisionTransformer
from torch import nn


def bare_vit(size: str, output_dim: int) -> VisionTransformer:
    """A random open_clip ViT of ``VISION_SIZES[size]`` at 224 px, patch 14 (ImageBind's layer-norm eps)."""
    width, layers, heads = VISION_SIZES[size]
    return VisionTransformer(
        image_size=224,
        patch_size=14,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=4.0,
        output_dim=output_dim,
        act_layer=nn.GELU,
        norm_layer=partial(LayerNorm, eps=1e-6),
    ).eval()


def main() -> None:
    """Time both forwards on one batch and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(VISION_SIZES), default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed round-robin rounds")
    parser.add_argument("--k-shot", type=int, default=0, help="reference images in the memory (0: zero-shot map)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = random_sized_model(args.size).to(args.device)
    if args.k_shot:
        model.set_references(torch.randn(args.k_shot, 3, 224, 224, device=args.device))
    vit = bare_vit(args.size, model.decoder.fc[0].weight.shape[0]).to(args.device)
    images = torch.randn(args.batch, 3, 224, 224, device=args.device)

    note = rounds_note(args.rounds, args.warmup)
    with torch.no_grad():
        features = model.vision_encoder(images)
        timings = round_robin(
            {
                f"scores path ({args.k_shot}-shot)": lambda: model(images),
                "bare open_clip forward": lambda: vit(images),
                "  of which encoder": lambda: model.vision_encoder(images),
                "  of which maps + score": lambda: model.scores(features, (224, 224)),
            },
            args.rounds,
            args.warmup,
            sync=synchronizer(args.device),
        )
    scores, bare, encoder, maps = (timing.median for timing in timings.values())
    width, layers, heads = VISION_SIZES[args.size]
    print(
        f"sizes: {args.size} (width {width}, {layers} layers, {heads} heads, 224 px), batch {args.batch}, {args.device}"
    )
    print(note)
    for name, timing in timings.items():
        print(f"{name:26s} {timing.rate(args.batch)}  {timing.ms()} per batch")
    print(
        f"scores path split (medians): encoder {1000 * encoder:.1f} ms ({100 * encoder / (encoder + maps):.1f}%), "
        f"maps + score {1000 * maps:.2f} ms ({100 * maps / (encoder + maps):.1f}%)",
    )
    print(
        f"scores-path / bare-forward throughput ({args.size}, batch {args.batch}): {bare / scores:.2f}x (goal >= 0.9x)"
    )


if __name__ == "__main__":
    main()
