"""``anomalib-agpt leaderboard``: rank AnomalyGPT and anomalib models on the same data, categories and seeds.

Every cell (model, category, seed) runs through anomalib's ``Engine`` (``fit`` with the datamodule
passed by keyword, then ``test``) with an ``Evaluator`` holding the model's own test metrics plus
``AUPRO``. Results are appended to ``results.csv`` cell by cell, so an interrupted run resumes: cells
already recorded as ``ok`` or ``skipped`` are not run again, ``failed`` ones are retried.

Offline rule (a fixed table, :data:`DOWNLOAD_NEEDS`): models whose weights anomalib downloads and that
cannot run without them (EfficientAd's teacher + Imagenette, WinClip's CLIP, Dinomaly's DINOv2) are
skipped with the reason recorded unless their files are already on disk (EfficientAd) or the machine
may download (``HF_HUB_OFFLINE`` unset; no host is probed, a failed download is recorded as failed).
Models whose constructor takes ``pre_trained`` get ``pre_trained=False`` and are marked "random
backbone". Without AnomalyGPT weights the ``random-small`` preset is used and marked "random weights".

Memory: ``peak_rss_mb`` is the rise of the process's peak RSS during the cell (``VmHWM`` of
``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``, minus the RSS at the start;
where the reset is refused, the rise of ``VmHWM`` itself, a lower bound); ``peak_gpu_mb`` is
``torch.cuda.max_memory_allocated`` on GPU. No tracemalloc (it misses native allocations and is slow).

Explanations: with ``--llm`` every AnomalyGPT cell (zero-, few- and full-shot) also answers "Is there any
anomaly?" for each test image and reports ``AnswerAccuracy`` and ``ExplanationGrounding``. The released
model needs three files for that: the LLM folder (Vicuna-7B v0), the PandaGPT delta
(``--pandagpt-checkpoint`` or ``$ANOMALIB_AGPT_PANDAGPT``) and the AnomalyGPT delta; a cell missing one
fails saying which. Per-model ``model_options`` in the YAML override any of them.

Multi-GPU: each cell runs on ``--devices`` Lightning devices (default 1); there is no scheduler.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import logging
import math
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
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
COLUMNS = (
    "model",
    "category",
    "seed",
    "status",
    "notes",
    "image_AUROC",
    "pixel_AUROC",
    "image_F1Score",
    "pixel_F1Score",
    "pixel_AUPRO",
    "AnswerAccuracy",
    "ExplanationGrounding",
    "ms_per_image",
    "peak_rss_mb",
    "peak_gpu_mb",
    "seconds",
    "finished_at",
)
METRICS = COLUMNS[5:12]
DONE_PREFIXES = ("ok", "skipped")
ANOMALYGPT_NAME = re.compile(r"^anomalygpt-(\d+|full)-?shot$", re.IGNORECASE)
RANDOM_BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "patchcore": {
        "backbone": "resnet18",
        "layers": ("layer2", "layer3"),
        "coreset_sampling_ratio": 0.1,
        "num_neighbors": 9,
    },
    "padim": {"backbone": "resnet18"},
}
"""Extra constructor options of models run with a random backbone (small and fast)."""


def quiet() -> None:
    """Keep a run's output to its table: no warnings, log lines or Lightning banners."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def batch_timer() -> Any:  # noqa: ANN401
    """A Lightning callback that times the test batches (model work only, not data loading)."""
    from lightning.pytorch import Callback

    class TestTimer(Callback):
        def __init__(self) -> None:
            self.seconds = 0.0
            self.images = 0
            self._start = 0.0

        def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, *args: Any) -> None:  # noqa: ANN401
            self._start = time.perf_counter()

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:  # noqa: ANN401
            self.seconds += time.perf_counter() - self._start
            self.images += len(batch.image)

    return TestTimer()


def _efficientad_local() -> bool:
    """Whether EfficientAd's teacher weights and Imagenette are already on disk."""
    from anomalib.utils.path import get_pretrained_weights_dir

    teacher = get_pretrained_weights_dir() / "efficientad_pretrained_weights"
    return teacher.is_dir() and Path("./datasets/imagenette").is_dir()


def _online() -> bool:
    """Whether downloads are allowed: ``HF_HUB_OFFLINE`` unset (no host is probed; a failed download is recorded)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() not in {"1", "true", "yes", "on"}


DOWNLOAD_NEEDS: dict[str, tuple[str, Callable[[], bool]]] = {
    "efficientad": ("pretrained teacher + Imagenette are downloaded at fit time", _efficientad_local),
    "efficient_ad": ("pretrained teacher + Imagenette are downloaded at fit time", _efficientad_local),
    "winclip": ("needs OpenCLIP ViT-B-16-plus-240 weights (download)", _online),
    "win_clip": ("needs OpenCLIP ViT-B-16-plus-240 weights (download)", _online),
    "dinomaly": ("needs DINOv2 encoder weights (download)", _online),
}
"""The known table of models that cannot run without downloaded weights: reason and availability check."""


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


@dataclass
class BuiltModel:
    """A constructed model (or the reason it cannot run) with its table note and trainer options."""

    model: Any = None
    notes: str = ""
    skip_reason: str | None = None
    trainer_options: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str]) -> LeaderboardConfig:
    """Merge ``--config`` YAML (if any) with the flags; flags win, then the environment, then defaults."""
    parser = argparse.ArgumentParser(prog="anomalib-agpt leaderboard", description=__doc__)
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


def make_datamodule(config: LeaderboardConfig, data_root: Path | None, category: str) -> Any:  # noqa: ANN401
    """The anomalib datamodule of one category."""
    loader = {
        "train_batch_size": config.train_batch_size,
        "eval_batch_size": config.eval_batch_size,
        "num_workers": config.num_workers,
    }
    if config.dataset in {"synthetic", "mvtec"}:
        from anomalib.data import MVTecAD

        return MVTecAD(root=data_root, category=category, **loader)
    if config.dataset == "visa":
        from anomalib.data import Visa

        return Visa(root=data_root, category=category, **loader)
    from anomalib.data import Folder

    options = {"name": category, **config.folder, **loader}
    if config.root is not None:
        options.setdefault("root", config.root)
    return Folder(**options)


def _evaluator(base: Any) -> Any:  # noqa: ANN401
    """The model's own test metrics (an ``Evaluator``) plus pixel AUPRO."""
    from anomalib.metrics import AUPRO

    base.test_metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
    return base


def build_model(name: str, config: LeaderboardConfig, category: str, seed: int) -> BuiltModel:
    """Construct one leaderboard model by name (AnomalyGPT-<k>shot / -fullshot or an anomalib model)."""
    match = ANOMALYGPT_NAME.match(name)
    extra = dict(config.model_options.get(name, {}))
    if match:
        return _build_anomalygpt(match.group(1), config, category, seed, extra)
    return _build_anomalib(name, config, extra)


def _build_anomalygpt(shots: str, config: LeaderboardConfig, category: str, seed: int, extra: dict) -> BuiltModel:
    """AnomalyGPT k-shot (set up in ``fit``) or full-shot (decoder trained on the normal images)."""
    from anomalib_agpt.model.lightning_model import AnomalyGPT

    explain = config.llm is not None
    if config.random_anomalygpt:
        options: dict[str, Any] = {"preset": "random-small", "seed": seed}
        notes = "random weights (random-small preset)"
    else:
        options = {
            "imagebind_checkpoint": config.imagebind_checkpoint,
            "anomalygpt_checkpoint": config.anomalygpt_checkpoint,
            "vision_heads": config.vision_heads,
            "text_heads": config.text_heads,
            "seed": seed,
        }
        notes = ""
    if explain:
        # The PandaGPT delta travels with the LLM: explain=True refuses an LLM without it (llama_proj, LoRA).
        options.update({"llm": config.llm, "pandagpt_checkpoint": config.pandagpt_checkpoint, "explain": True})
    trainer: dict[str, Any] = {}
    if shots == "full":
        options["trainable"] = ["decoder"]
        trainer = {"max_epochs": config.epochs, "check_val_every_n_epoch": config.epochs}
    else:
        options["k_shot"] = int(shots)
    options.update(extra)
    options.setdefault("visualizer", config.visualize)
    options.setdefault("evaluator", _evaluator(AnomalyGPT.configure_evaluator(explain=bool(options.get("explain")))))
    del category  # the class name follows the datamodule's category
    notes = "; ".join(note for note in (notes, *_anomalygpt_notes(options)) if note)
    return BuiltModel(AnomalyGPT(**options), notes=notes, trainer_options=trainer)


def _anomalygpt_notes(options: dict[str, Any]) -> list[str]:
    """What the table should say about an AnomalyGPT cell: what trains and which LLM explains."""
    notes = []
    trainable = options.get("trainable") or ()
    if trainable:
        notes.append(f"trained: {', '.join(trainable)}")
    if options.get("explain") and options.get("llm"):
        notes.append(f"explains with {Path(str(options['llm'])).stem}")
    return notes


def _pretrained_backbone_available(backbone: inspect.Parameter | None) -> bool:
    """Whether a model's default pretrained backbone can load: downloads allowed, or timm's weights cached."""
    if _online():
        return True
    name = backbone.default if backbone is not None else None
    if not isinstance(name, str):
        return False
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    except Exception:  # an unknown backbone name: treat as unavailable
        return False
    if not hub_id:
        return False
    return any(
        isinstance(try_to_load_from_cache(hub_id, file), str) for file in ("model.safetensors", "pytorch_model.bin")
    )


def _build_anomalib(name: str, config: LeaderboardConfig, extra: dict) -> BuiltModel:
    """An anomalib model through ``get_model``: random backbone offline, skipped if it needs downloads."""
    from anomalib.models import UnknownModelError, get_model
    from anomalib.models import _get_model_class_by_name as model_class

    try:
        cls = model_class(name)
    except UnknownModelError as error:
        msg = f"unknown model {name!r} (neither AnomalyGPT-<k>shot/-fullshot nor an anomalib model)"
        raise UnknownModelError(msg) from error
    key = cls.__name__.lower()
    if key in DOWNLOAD_NEEDS:
        reason, available = DOWNLOAD_NEEDS[key]
        if not available():
            where = "HF_HUB_OFFLINE is set" if available is _online else "offline and not found locally"
            return BuiltModel(skip_reason=f"{reason}; {where}")
    options: dict[str, Any] = {}
    notes = ""
    parameters = inspect.signature(cls.__init__).parameters
    if "pre_trained" in parameters and not _pretrained_backbone_available(parameters.get("backbone")):
        options = {"pre_trained": False, **RANDOM_BACKBONE_OPTIONS.get(key, {})}
        notes = f"random backbone ({options.get('backbone', 'default')})"
    options.update(extra)
    options.setdefault("visualizer", config.visualize)
    options.setdefault("evaluator", _evaluator(cls.configure_evaluator()))
    model = get_model(name, **options)
    trainer = {"max_epochs": config.epochs, "check_val_every_n_epoch": config.epochs}
    return BuiltModel(model, notes=notes, trainer_options=trainer)


def _vm_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (0 where there is no procfs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) by writing 5 to ``/proc/self/clear_refs``; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run_cell(name: str, config: LeaderboardConfig, data_root: Path | None, category: str, seed: int) -> dict:
    """Build, fit and test one cell; never raises: failures come back as ``status = failed: ...``."""
    import torch
    from lightning.pytorch import seed_everything

    row: dict[str, Any] = {"model": name, "category": category, "seed": seed}
    started = time.perf_counter()
    try:
        seed_everything(seed, verbose=False)
        built = build_model(name, config, category, seed)
        row["notes"] = built.notes
        if built.skip_reason is not None:
            row["status"] = f"skipped: {built.skip_reason}"
            return row
        from anomalib import LearningType
        from anomalib.engine import Engine

        datamodule = make_datamodule(config, data_root, category)
        trainer = dict(built.trainer_options)
        if built.model.learning_type in {LearningType.ZERO_SHOT, LearningType.FEW_SHOT}:
            trainer = {}  # fit = the validation-only set-up (references, text features, thresholds)
        timer = batch_timer()
        engine = Engine(
            default_root_dir=config.output / "runs" / name / category / f"seed{seed}",
            logger=False,
            devices=config.devices,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            **trainer,
        )
        rss_before = _vm_kib("VmRSS") if _reset_peak_rss() else _vm_kib("VmHWM")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        engine.fit(model=built.model, datamodule=datamodule)  # BY KEYWORD: zero/few-shot set-up needs it
        metrics = engine.test(model=built.model, datamodule=datamodule, verbose=False)[0]
        row["peak_rss_mb"] = max(_vm_kib("VmHWM") - rss_before, 0) / 1024
        if torch.cuda.is_available():
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["ms_per_image"] = 1000 * timer.seconds / max(timer.images, 1)
        for metric in METRICS:
            if metrics.get(metric) is not None:
                row[metric] = float(metrics[metric])
        row["status"] = "ok"
    except Exception as error:  # one failing cell must not end the run
        message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        row["status"] = f"failed: {message}"
        (config.output / "errors").mkdir(parents=True, exist_ok=True)
        (config.output / "errors" / f"{name}_{category}_seed{seed}.txt").write_text(traceback.format_exc())
    finally:
        row["seconds"] = time.perf_counter() - started
        row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return row


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of ``results.csv`` (empty when it does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one cell to ``results.csv`` (with the header when new), flushed at once."""
    new = not path.is_file()
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({key: _csv_value(row.get(key)) for key in COLUMNS})


def _csv_value(value: Any) -> str:  # noqa: ANN401
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return str(row["model"]), str(row["category"]), str(row["seed"])


def latest_rows(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], dict[str, str]]:
    """The newest row of every cell (a retried failed cell is recorded again)."""
    return {_key(row): row for row in rows}


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in {None, ""} else None
    except ValueError:
        return None
    return None if number is None or math.isnan(number) else number


def _mean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


TABLE = (
    ("image AUROC", "image_AUROC"),
    ("pixel AUROC", "pixel_AUROC"),
    ("image F1", "image_F1Score"),
    ("pixel F1", "pixel_F1Score"),
    ("AUPRO", "pixel_AUPRO"),
    ("answer acc.", "AnswerAccuracy"),
    ("grounding", "ExplanationGrounding"),
    ("ms / image", "ms_per_image"),
    ("peak RSS +MB", "peak_rss_mb"),
)


def summarise(rows: list[dict[str, str]], config: LeaderboardConfig) -> list[dict[str, Any]]:
    """Per (model, category) means over seeds, then a ``mean`` row per model over its categories."""
    cells = latest_rows(rows)
    summary: list[dict[str, Any]] = []
    for model in config.models:
        per_category = []
        for category in config.categories:
            own = [cells[key] for seed in config.seeds if (key := (model, category, str(seed))) in cells]
            if not own:
                continue
            ok = [row for row in own if row["status"] == "ok"]
            statuses = sorted({row["status"] for row in own if row["status"] != "ok"})
            entry: dict[str, Any] = {
                "model": model,
                "category": category,
                "notes": next((row["notes"] for row in own if row.get("notes")), ""),
                "status": f"ok ({len(ok)}/{len(own)} seeds)" if ok else "; ".join(statuses),
                "n_ok": len(ok),
            }
            entry.update({column: _mean([_float(row.get(column)) for row in ok]) for _, column in TABLE})
            per_category.append(entry)
        summary.extend(per_category)
        ok_categories = [entry for entry in per_category if entry["n_ok"]]
        if ok_categories:
            mean = {"model": model, "category": "**mean**", "notes": ok_categories[0]["notes"], "n_ok": 1}
            mean["status"] = f"ok ({len(ok_categories)}/{len(per_category)} categories)"
            mean.update({column: _mean([entry[column] for entry in ok_categories]) for _, column in TABLE})
            summary.append(mean)
    return summary


def _fmt(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if column in {"ms_per_image", "peak_rss_mb"} else f"{value:.3f}"


def write_markdown(summary: list[dict[str, Any]], config: LeaderboardConfig) -> str:
    """``leaderboard.md``: the per-category table and the per-model means, ranked by mean image AUROC."""
    header = ["model", "category", *(title for title, _ in TABLE), "status", "notes"]
    lines = [f"# Leaderboard ({config.dataset}, seeds {', '.join(map(str, config.seeds))})", ""]

    def table(entries: list[dict[str, Any]]) -> list[str]:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for entry in entries:
            values = [_fmt(entry[column], column) for _, column in TABLE]
            out.append("| " + " | ".join([entry["model"], entry["category"], *values, entry["status"], entry["notes"]]))
            out[-1] += " |"
        return out

    means = sorted(
        (entry for entry in summary if entry["category"] == "**mean**"),
        key=lambda entry: -(entry["image_AUROC"] if entry["image_AUROC"] is not None else -1.0),
    )
    lines += ["## Mean over categories (ranked by image AUROC)", "", *table(means), ""]
    lines += ["## Per category (mean over seeds)", "", *table(summary), ""]
    if config.random_anomalygpt:
        lines.append(
            "AnomalyGPT rows marked *random weights* use the `random-small` preset (no weights configured): they "
            f"say nothing about the released model. Set {IMAGEBIND_ENV} and {CHECKPOINT_ENV}.",
        )
    if any("random backbone" in entry["notes"] for entry in summary):
        lines.append("Rows marked *random backbone* ran with `pre_trained=False` (offline).")
    text = "\n".join(lines) + "\n"
    (config.output / "leaderboard.md").write_text(text)
    return text


def write_chart(summary: list[dict[str, Any]], path: Path) -> None:
    """``leaderboard.png``: mean image and pixel AUROC per model as grouped bars (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [entry for entry in summary if entry["category"] == "**mean**"]
    labels = [entry["model"] + (" *" if "random" in entry["notes"] else "") for entry in means]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(means) + 2), 4.5))
    width = 0.4
    for offset, (title, column) in zip((-width / 2, width / 2), TABLE[:2], strict=True):
        heights = [entry[column] if entry[column] is not None else 0.0 for entry in means]
        axes.bar([i + offset for i in range(len(means))], heights, width, label=title)
    axes.set_xticks(range(len(means)), labels, rotation=30, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("AUROC (mean over categories)")
    axes.set_title("anomalib-agpt leaderboard (* random weights/backbone)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_summary(summary: list[dict[str, Any]], title: str) -> None:
    """The ranked means (and, with several categories, each category) as a rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    means = [entry for entry in summary if entry["category"] == "**mean**"]
    several = len(means) < len([entry for entry in summary if entry["category"] != "**mean**"])
    shown = [entry for entry in summary if several or entry["category"] != "**mean**"]
    table = Table(title=title)
    for column in ("model", "category", *(name for name, _ in TABLE), "notes"):
        table.add_column(column, justify="left" if column in {"model", "category", "notes"} else "right")
    for entry in shown:
        mean = entry["category"] == "**mean**"
        values = [_fmt(entry[column], column) for _, column in TABLE]
        notes = entry["notes"] if entry["n_ok"] else entry["status"]
        category = "mean" if mean else entry["category"]
        table.add_row(entry["model"], category, *values, notes, style="bold" if mean else None)
    Console(width=200).print(table)


def run_leaderboard(config: LeaderboardConfig, title: str = "anomalib-agpt leaderboard") -> list[dict[str, Any]]:
    """Run every missing cell, print the table, write ``leaderboard.md`` / ``.png``; return the summary."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    quiet()
    config.output.mkdir(parents=True, exist_ok=True)
    data_root = config.root
    if config.dataset == "synthetic":
        from anomalib_agpt.data import make_synthetic_mvtec

        data_root = make_synthetic_mvtec(config.output / "data", categories=config.categories, **config.synthetic)
    results = config.output / "results.csv"
    done = {key for key, row in latest_rows(read_results(results)).items() if row["status"].startswith(DONE_PREFIXES)}
    for category in config.categories:
        for seed in config.seeds:
            for name in config.models:
                if (name, category, str(seed)) in done:
                    continue
                row = run_cell(name, config, data_root, category, seed)
                append_result(results, row)
                print(f"  {name} / {category} / seed {seed}: {row['status']}", flush=True)
    summary = summarise(read_results(results), config)
    print_summary(summary, title)
    write_markdown(summary, config)
    write_chart(summary, config.output / "leaderboard.png")
    print(f"Leaderboard in {(config.output / 'leaderboard.md').resolve()}", flush=True)
    return summary


def main(argv: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``anomalib-agpt leaderboard``: parse the options and run."""
    return run_leaderboard(parse_args(argv))
