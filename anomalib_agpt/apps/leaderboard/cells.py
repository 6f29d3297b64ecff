"""Where a leaderboard cell runs: build, fit and test one (model, category, seed) through anomalib's Engine."""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.leaderboard.config import LeaderboardConfig
from anomalib_agpt.apps.leaderboard.models import build_model
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
        mark_failed(row, config, f"{type(error).__name__}: {error}", traceback.format_exc())
    finally:
        row["seconds"] = time.perf_counter() - started
        row["finished_at"] = finished_at()
    return row
