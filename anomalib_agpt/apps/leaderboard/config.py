"""What a leaderboard run depends on: models, data, seeds, weights; from flags, a YAML file and the environment."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

IMAGEBIND_ENV = "ANOMALIB_AGPT_IMAGEBIND"


CHECKPOINT_ENV = "ANOMALIB_AGPT_CHECKPOINT"


PANDAGPT_ENV = "ANOMALIB_AGPT_PANDAGPT"


DEFAULT_MODELS = (
    "AnomalyGPT-0shot",
    "AnomalyGPT-1shot",
    "AnomalyGPT-4shot",
    "AnomalyGPT-fullshot",
    "Patchcore",
    "Padim",
    "EfficientAd",
    "WinClip",
    "Dinomaly",
)


@dataclass
class LeaderboardConfig:
    """Everything a leaderboard run depends on (YAML keys use these names, ``-`` or ``_``)."""

    output: Path = Path("leaderboard_output")
    dataset: str = "synthetic"
    root: Path | None = None
    categories: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    imagebind_checkpoint: str | None = None
    anomalygpt_checkpoint: str | None = None
    vision_heads: int = 16
    text_heads: int = 16
    llm: str | None = None
    pandagpt_checkpoint: str | None = None
    epochs: int = 2
    devices: int = 1
    train_batch_size: int = 4
    eval_batch_size: int = 8
    num_workers: int = 0
    visualize: bool = False
    synthetic: dict[str, Any] = field(default_factory=dict)
    folder: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def random_anomalygpt(self) -> bool:
        """No AnomalyGPT weights configured: the ``random-small`` preset stands in."""
        return not (self.imagebind_checkpoint and self.anomalygpt_checkpoint)


def parse_args(argv: Sequence[str]) -> LeaderboardConfig:
    """Merge ``--config`` YAML (if any) with the flags; flags win, then the environment, then defaults."""
    description = importlib.import_module(__package__).__doc__  # the package says what a run does
    parser = argparse.ArgumentParser(prog="anomalib-agpt leaderboard", description=description)
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below (and model_options)")
    parser.add_argument("--output", type=Path, help="folder for data, runs and results (default leaderboard_output)")
    parser.add_argument("--dataset", choices=["synthetic", "mvtec", "visa", "folder"])
    parser.add_argument("--root", type=Path, help="dataset root (mvtec, visa, folder)")
    parser.add_argument("--categories", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--models", nargs="+", help=f"default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--imagebind-checkpoint", help=f"default ${IMAGEBIND_ENV}")
    parser.add_argument("--anomalygpt-checkpoint", help=f"default ${CHECKPOINT_ENV}")
    parser.add_argument("--vision-heads", type=int)
    parser.add_argument("--text-heads", type=int)
    parser.add_argument(
        "--llm",
        help="LLM folder: AnomalyGPT cells also explain (answer accuracy, grounding); needs --pandagpt-checkpoint",
    )
    parser.add_argument(
        "--pandagpt-checkpoint",
        help=f"PandaGPT delta (llama_proj + LoRA) the LLM explains with (default ${PANDAGPT_ENV})",
    )
    parser.add_argument("--epochs", type=int, help="epochs of trained (one-class) models (default 2)")
    parser.add_argument("--devices", type=int, help="Lightning devices per cell (default 1)")
    parser.add_argument("--visualize", action="store_true", default=None, help="save anomalib's result images")
    args = parser.parse_args(list(argv))
    values: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        loaded = yaml.safe_load(args.config.read_text()) or {}
        values.update({key.replace("-", "_"): value for key, value in loaded.items()})
    values.update({key: value for key, value in vars(args).items() if key != "config" and value is not None})
    known = {f.name for f in fields(LeaderboardConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"unknown option(s) in the config: {', '.join(unknown)}")
    values.setdefault("imagebind_checkpoint", os.environ.get(IMAGEBIND_ENV) or None)
    values.setdefault("anomalygpt_checkpoint", os.environ.get(CHECKPOINT_ENV) or None)
    values.setdefault("pandagpt_checkpoint", os.environ.get(PANDAGPT_ENV) or None)
    config = LeaderboardConfig(**values)
    config.output = Path(config.output)
    config.root = Path(config.root) if config.root is not None else None
    config.seeds = [int(seed) for seed in config.seeds]
    if config.dataset in {"mvtec", "visa"} and config.root is None:
        parser.error(f"--dataset {config.dataset} needs --root")
    if not config.categories:
        config.categories = _default_categories(config)
    return config


def _default_categories(config: LeaderboardConfig) -> list[str]:
    """Every category of the dataset (the folder dataset has one, named after ``folder.name``)."""
    if config.dataset == "synthetic":
        from anomalib_agpt.data import SYNTHETIC_CATEGORIES

        return list(SYNTHETIC_CATEGORIES)
    if config.dataset == "folder":
        return [str(config.folder.get("name", "folder"))]
    from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTEC
    from anomalib.data.datasets.image.visa import CATEGORIES as VISA

    return list(MVTEC if config.dataset == "mvtec" else VISA)
