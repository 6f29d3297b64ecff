"""What each inference option buys, each against its baseline in the same run (faster is > 1).

    python benchmarks/inference_options.py [--rounds 5] [--batch 2] [--tokens 24] [--device cpu|cuda]

LLM options (merged LoRA, SDPA vs eager attention, 8-/4-bit through bitsandbytes) on a random
LLaMA of hidden 512 x 8 layers with the PandaGPT-style LoRA, answering a batch of images with
exactly ``--tokens`` new tokens each (no early stop: every variant does the same work); ratio =
baseline seconds per answer / option's. The baseline is unmerged LoRA, SDPA, fp32 on CPU and
fp16 on CUDA. Encoder options (``torch.compile``, half precision: fp16 on CUDA, bf16 on CPU) on a
random ViT-B-sized vision tower (768 wide, 12 layers, 224 px): the scores path's seconds per
image after warm-up, the compile time (a fresh inductor cache, as on a first start, unless
``--warm-compile-cache``) and the largest map difference to fp32. Quantisation needs CUDA and
bitsandbytes (the ``quant`` extra); elsewhere it is reported as not measured. Timings are medians
of ``--rounds`` round-robin rounds (min-max alongside), ratios are ratios of medians. Last line is
the summary of every ratio.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _setup import random_llm_weights, random_sized_model, round_robin, rounds_note, synchronizer

LLM_SIZE = {"hidden": 512, "layers": 8, "heads": 8, "mlp": 1376}


def load_explainer(weights: dict, device: torch.device, **options: object) -> tuple[object, float, int]:
    """``(AnomalyGPT with its LLM loaded, load seconds, CUDA bytes the load added)``."""
    from anomalib_agpt import AnomalyGPT
    from anomalib_agpt.module.legacy_options import group_flat_options

    flat = {**weights, "explain": True, "class_name": "bottle", **options}
    model = AnomalyGPT(**group_flat_options(flat)).to(device).eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    start = time.perf_counter()
    model.model.ensure_llm_head()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    added = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else 0
    return model, seconds, added


def answering(model: object, images: torch.Tensor, tokens: int) -> Callable[[], list[list[int]]]:
    """One greedy ``generate`` of exactly ``tokens`` new tokens for the batch (inputs built once)."""
    torch_model = model.model
    with torch.no_grad():
        inputs_embeds, attention_mask = torch_model.build_llm_inputs(images)
    llm = torch_model.llm_head.llm

    @torch.no_grad()
    def run() -> list[list[int]]:
        output = llm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
            use_cache=True,
        )
        return output.tolist()

    return run


Ratio = tuple[str, str, str]
"""``(option, speed ratio or why not measured, note)``; the ratios also go into the summary line."""


def llm_options(args: argparse.Namespace, device: torch.device, folder: Path) -> tuple[list[str], list[Ratio]]:
    """Table rows and ratio lines of merged LoRA, eager attention and 8-/4-bit loading."""
    weights = random_llm_weights(folder, **LLM_SIZE)
    dtype = "fp16" if device.type == "cuda" else "fp32"
    images = torch.randn(args.batch, 3, 224, 224, device=device)
    variants = {
        f"LLM baseline ({dtype}, LoRA unmerged, sdpa)": {"llm_dtype": dtype},
        "LLM merged LoRA": {"llm_dtype": dtype, "merge_lora": True},
        "LLM eager attention": {"llm_dtype": dtype, "attn_implementation": "eager"},
    }
    quantised = device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    if quantised:
        variants |= {f"LLM {q}": {"llm_dtype": dtype, "llm_quantization": q} for q in ("8bit", "4bit")}
    loaded = {name: load_explainer(weights, device, **options) for name, options in variants.items()}
    runs = {name: answering(model, images, args.tokens) for name, (model, _, _) in loaded.items()}
    timings = round_robin(runs, args.rounds, warmup=1, sync=synchronizer(device))
    answers = {name: timing.result for name, timing in timings.items()}
    seconds = {name: timing.median for name, timing in timings.items()}
    names = list(runs)
    base = seconds[names[0]]
    parameters = sum(p.numel() for p in loaded[names[0]][0].model.llm_head.llm.parameters())
    rows = []
    for name in names:
        same = "yes" if answers[name] == answers[names[0]] else "no"
        memory = f"{loaded[name][2] / 2**20:8.1f} MiB" if device.type == "cuda" else "      n/a"
        rows.append(
            f"{name:44s} {timings[name].ms(per=args.batch)} per answer  load {loaded[name][1]:5.2f} s  "
            f"{memory}  same tokens as baseline: {same}"
        )
    rows.insert(
        0, f"LLM: random LLaMA {parameters / 1e6:.1f}M parameters, {args.tokens} new tokens, batch {args.batch}"
    )
    ratios = [
        ("merged LoRA", f"{base / seconds['LLM merged LoRA']:.2f}x", ""),
        ("sdpa attention (vs eager)", f"{seconds['LLM eager attention'] / base:.2f}x", ""),
    ]
    if quantised:
        for q in ("8bit", "4bit"):
            name = f"LLM {q}"
            memory = loaded[name][2] / loaded[names[0]][2]
            ratios.append((f"{q} LLM (vs fp16)", f"{base / seconds[name]:.2f}x", f", memory {memory:.2f}x of fp16's"))
    else:
        ratios.append(("8bit/4bit LLM", "not measured: needs CUDA and bitsandbytes", ""))
    return rows, ratios


def encoder_options(args: argparse.Namespace, device: torch.device) -> tuple[list[str], list[Ratio]]:
    """Table rows and ratio lines of ``torch.compile`` and a half-precision encoder."""
    half = "fp16" if device.type == "cuda" else "bf16"
    eager = random_sized_model("small").to(device)
    halved = copy.deepcopy(eager)
    halved.configure_encoder(half)
    images = torch.randn(args.batch, 3, 224, 224, device=device)

    def scores(model: object, compiled: bool) -> Callable[[], object]:
        def run() -> object:
            model.compile_encoder = compiled
            return model(images)

        return run

    plain, compiled, half_run = scores(eager, False), scores(eager, True), scores(halved, False)
    sync = synchronizer(device) or (lambda: None)
    reference = plain().anomaly_map
    sync()
    start = time.perf_counter()
    compiled_map = compiled().anomaly_map  # the first compiled call compiles
    sync()
    compile_seconds = time.perf_counter() - start
    half_map = half_run().anomaly_map
    timings = round_robin(
        {"eager": plain, "compiled": compiled, "half": half_run}, args.rounds, warmup=1, sync=synchronizer(device)
    )
    seconds = [timing.median for timing in timings.values()]
    per_image = [timing.ms(per=args.batch) for timing in timings.values()]
    compile_difference = (compiled_map - reference).abs().max().item()
    half_difference = (half_map - reference).abs().max().item()
    megabytes = [
        sum(p.numel() * p.element_size() for p in m.vision_encoder.parameters()) / 2**20 for m in (eager, halved)
    ]
    rows = [
        f"encoder: random ViT-B-sized vision tower (768 x 12), batch {args.batch}, scores path (encoder + maps)",
        f"{'encoder fp32 eager (baseline)':44s} {per_image[0]} per image  weights {megabytes[0]:6.0f} MiB",
        f"{'encoder fp32 torch.compile':44s} {per_image[1]} per image  compile {compile_seconds:6.1f} s  "
        f"max |map - eager| {compile_difference:.1e}",
        f"{f'encoder {half}':44s} {per_image[2]} per image  weights {megabytes[1]:6.0f} MiB  "
        f"max |map - fp32| {half_difference:.1e} (map dtype {half_map.dtype})",
    ]
    ratios = [
        ("torch.compile encoder", f"{seconds[0] / seconds[1]:.2f}x", f", after {compile_seconds:.1f} s compiling"),
        (f"{half} encoder", f"{seconds[0] / seconds[2]:.2f}x", f", max map difference {half_difference:.1e}"),
    ]
    return rows, ratios


def main() -> None:
    """Measure every option against its baseline and print the table, the ratios, then the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="timed round-robin rounds (after 1 warm-up round)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="use inductor's on-disk cache (a later start's compile time) instead of a fresh one (a first start's)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    taken = rounds_note(args.rounds, 1)  # the load average before the run
    with tempfile.TemporaryDirectory() as folder:
        if not args.warm_compile_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder) / "inductor")
        llm_rows, llm_ratios = llm_options(args, device, Path(folder))
        encoder_rows, encoder_ratios = encoder_options(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; {taken}")
    for row in llm_rows + encoder_rows:
        print(row)
    ratios = llm_ratios + encoder_ratios
    for option, figure, note in ratios:
        print(f"{option}: {figure} (faster is > 1){note}" if figure[0].isdigit() else f"{option}: {figure}")
    summary = "; ".join(f"{option} {figure if figure[0].isdigit() else 'not measured'}" for option, figure, _ in ratios)
    print(f"inference options on {device.type}, speed vs baseline (faster is > 1): {summary}")


if __name__ == "__main__":
    main()
