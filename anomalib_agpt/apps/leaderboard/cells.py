"""Where a leaderboard cell runs: build, fit and test one (model, category, seed) through anomalib's Engine."""

from __future__ import annotations

import ctypes
import logging
import os
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig
from anomalib_agpt.apps.leaderboard.models import ANOMALYGPT_NAME, build_model
from anomalib_agpt.apps.leaderboard.results import METRICS


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


IMAGE_SCORES = "image_scores.csv"
"""Each cell's raw per-image scores, in its run folder: ``image_path,label,score``."""


def image_score_recorder(path: Path) -> Any:  # noqa: ANN401
    """A :class:`RawScoreKeeper` that also writes each tested image's raw score to ``path`` when the test ends.

    As a Trainer callback it runs before any model's post-processor, so every model's threshold-free
    metrics read raw values; the file is written whole and renamed into place (never half a file).
    """
    from anomalib_agpt.callbacks.raw_scores import RAW_FIELDS, RawScoreKeeper

    class ImageScoreRecorder(RawScoreKeeper):
        def __init__(self) -> None:
            self.rows: list[tuple[str, int, float]] = []

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
            super().on_test_batch_end(trainer, pl_module, outputs, *args, **kwargs)
            scores = getattr(outputs, RAW_FIELDS["pred_score"]).reshape(-1).tolist()
            labels = outputs.gt_label.reshape(-1).int().tolist()
            self.rows.extend(zip(outputs.image_path, labels, scores, strict=True))

        def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # noqa: ANN401
            write_image_scores(path, self.rows)

    return ImageScoreRecorder()


def write_image_scores(path: Path, rows: list[tuple[str, int, float]]) -> None:
    """``image_path,label,score`` rows (scores at full float precision), written atomically."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image_path", "label", "score"])
        writer.writerows((image, label, repr(score)) for image, label, score in rows)
    os.replace(partial, path)


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


def mark_failed(row: dict[str, Any], config: LeaderboardConfig, why: str, detail: str) -> None:
    """``row`` as a failed cell: ``failed: <why>`` (one line, 300 characters), ``detail`` in ``OUTPUT/errors``."""
    row["status"] = f"failed: {' '.join(why.split())[:300]}"
    errors = config.output / "errors"
    errors.mkdir(parents=True, exist_ok=True)
    (errors / f"{row['model']}_{row['category']}_seed{row['seed']}.txt").write_text(detail)


def finished_at() -> str:
    """The time a row is recorded (UTC, ISO 8601 to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
LARGE_ALLOCATIONS = 32 * 2**20
"""AnomalyGPT cells' malloc thresholds: glibc's dynamic maximum, so activations are reused, not re-mapped."""


@contextmanager
def anomalygpt_malloc(name: str) -> Iterator[None]:
    """For an AnomalyGPT cell, lift the process's ``MALLOC_MMAP_THRESHOLD_`` (Patchcore's 128 KiB) meanwhile.

    Patchcore's coreset needs that low threshold (without it the heap grows to 8-24 GB on torch 2.14); the
    LLM's training steps, which allocate and free MB-sized activations hundreds of times a step, run 1.6x
    slower with it (every such tensor mmapped, zero-filled and unmapped: half the CPU time in the kernel).
    glibc's ``mallopt`` changes it in a running process; the environment's value is put back after the cell.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if os.name == "posix" else None
    if mallopt is None or not ANOMALYGPT_NAME.match(name) or not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        yield
        return
    mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATIONS)
    mallopt(M_TRIM_THRESHOLD, 2 * LARGE_ALLOCATIONS)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, int(os.environ["MALLOC_MMAP_THRESHOLD_"]))
        mallopt(M_TRIM_THRESHOLD, int(os.environ.get("MALLOC_TRIM_THRESHOLD_", GLIBC_DEFAULT_THRESHOLD)))


def run_cell(name: str, config: LeaderboardConfig, data_root: Path | None, category: str, seed: int) -> dict:
    """Build, fit and test one cell; never raises: failures come back as ``status = failed: ...``."""
    row: dict[str, Any] = {"model": name, "category": category, "seed": seed}
    started = time.perf_counter()
    try:
        with anomalygpt_malloc(name):
            _fit_and_test(name, config, data_root, category, seed, row)
        row.setdefault("status", "ok")
    except Exception as error:  # one failing cell must not end the run
        mark_failed(row, config, f"{type(error).__name__}: {error}", traceback.format_exc())
    finally:
        row["seconds"] = time.perf_counter() - started
        row["finished_at"] = finished_at()
    return row


def _fit_and_test(
    name: str, config: LeaderboardConfig, data_root: Path | None, category: str, seed: int, row: dict
) -> None:
    """The cell's work: fills ``row`` with its notes and metrics (and ``status`` when the model is skipped)."""
    import torch
    from anomalib import LearningType
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(seed, verbose=False)
    built = build_model(name, config, category, seed)
    row["notes"] = built.notes
    if built.skip_reason is not None:
        row["status"] = f"skipped: {built.skip_reason}"
        return
    datamodule = make_datamodule(config, data_root, category)
    trainer = dict(built.trainer_options)
    if built.model.learning_type in {LearningType.ZERO_SHOT, LearningType.FEW_SHOT}:
        trainer = {}  # fit = the validation-only set-up (references, text features, thresholds)
    timer = batch_timer()
    run_folder = config.output / "runs" / name / category / f"seed{seed}"
    engine = Engine(
        default_root_dir=run_folder,
        logger=False,
        devices=config.devices,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, image_score_recorder(run_folder / IMAGE_SCORES)],
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
