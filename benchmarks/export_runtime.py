"""Exported OpenVINO model vs torch eager: images per second of the scores path at ViT-B size.

    python benchmarks/export_runtime.py [--rounds 5] [--warmup 1] [--batch 1] [--height 512] [--width 512]

An ``anomalib_agpt.AnomalyGPT`` with a random ViT-B-sized vision tower (768 wide, 12 layers, 12
heads, 224 px, patch 14; ``_setup.random_sized_weights``) is exported with ``to_openvino`` (no
``input_size``: one graph for any height and width, pre- and post-processing included) and compiled
for the CPU with ``INFERENCE_PRECISION_HINT`` ``f32`` and, where the CPU reports ``BF16`` in
``OPTIMIZATION_CAPABILITIES``, ``bf16`` (``INFERENCE_NUM_THREADS``: torch's thread count).
Contenders, round-robin over ``--rounds`` rounds on the same float32 NCHW batch in [0, 1]: each
compiled model, and the torch eager path ``model(images)`` under ``torch.inference_mode`` (the same
pre-processing, model and post-processing). Prints the median images/s with min-max, each ratio of
medians to torch eager, and the largest anomaly-map difference of each OpenVINO precision to torch
(f32 is expected well below 1e-2: the figures are those of a correct model). Last line is the figure.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _setup import VISION_SIZES, random_sized_weights, round_robin, rounds_note


def compiled_runs(xml: Path, batch: np.ndarray) -> dict[str, Callable[[], dict[str, np.ndarray]]]:
    """One contender per OpenVINO precision the CPU runs natively: f32 always, bf16 where reported.

    OpenVINO gets torch's thread count, so that neither side wins by using more cores.
    """
    import openvino

    core = openvino.Core()
    precisions = ["f32"]
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        precisions.append("bf16")
    runs = {}
    for precision in precisions:
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        compiled = core.compile_model(str(xml), "CPU", config)
        names = [output.get_any_name() for output in compiled.outputs]

        def run(compiled: openvino.CompiledModel = compiled, names: list[str] = names) -> dict[str, np.ndarray]:
            outputs = compiled(batch)
            return {name: outputs[index] for index, name in enumerate(names)}

        runs[f"OpenVINO {precision}"] = run
    return runs


def main() -> None:
    """Export, compile, time the contenders round-robin and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed round-robin rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from anomalib_agpt import AnomalyGPT
    from anomalib_agpt.module.legacy_options import group_flat_options

    images = torch.rand(args.batch, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        weights = random_sized_weights("small", Path(folder) / "weights")
        model = AnomalyGPT(**group_flat_options(weights), class_name="bottle").eval()
        xml = model.to_openvino(Path(folder) / "export")

        def eager() -> dict[str, np.ndarray]:
            with torch.inference_mode():
                output = model(images)
            return {"anomaly_map": output.anomaly_map.numpy(), "pred_score": output.pred_score.numpy()}

        contenders = {**compiled_runs(xml, images.numpy()), "torch eager": eager}
        note = rounds_note(args.rounds, args.warmup)
        timings = round_robin(contenders, args.rounds, args.warmup)
    width, layers, heads = VISION_SIZES["small"]
    print(
        f"random ViT-B-sized AnomalyGPT ({width} wide, {layers} layers, {heads} heads, 224 px), zero-shot; input "
        f"{args.batch}x3x{args.height}x{args.width} float32 in [0, 1]; cpu, {torch.get_num_threads()} threads each"
    )
    print(note)
    reference = timings["torch eager"]
    figures = []
    for name, timing in timings.items():
        line = f"{name:14s} {timing.rate(args.batch)}  {timing.ms(per=args.batch)} per image"
        if name != "torch eager":
            speed_up = reference.median / timing.median
            difference = np.abs(timing.result["anomaly_map"] - reference.result["anomaly_map"]).max()
            score = np.abs(timing.result["pred_score"] - reference.result["pred_score"]).max()
            line += f"  {speed_up:.2f}x torch eager  max |map - torch| {difference:.1e}  |score - torch| {score:.1e}"
            figures.append(
                f"{name} {args.batch / timing.median:.2f} img/s ({speed_up:.2f}x, map diff {difference:.1e})"
            )
        print(line)
    print(
        f"images/s at {args.height}x{args.width}, batch {args.batch} (medians): " + "; ".join(figures) + f"; torch "
        f"eager {args.batch / reference.median:.2f} img/s"
    )


if __name__ == "__main__":
    main()
