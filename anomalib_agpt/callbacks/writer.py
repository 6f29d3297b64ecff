"""Write each test/predict result as one JSON line, and optionally its anomaly map as ``.npy``.

From the CLI::

    anomalib test ... --trainer.callbacks anomalib_agpt.callbacks.PredictionWriter \
        --trainer.callbacks.output_dir out

gives ``out/predictions.jsonl`` with one line per image::

    {"image_path": "...", "pred_score": 0.93, "pred_label": true, "explanation": "Yes, ...",
     "anomaly_map": "maps/000.npy"}

and ``out/maps/000.npy`` (float32, ``H x W``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Callback

from anomalib_agpt.errors import OptionError

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

PREDICTIONS_FILE = "predictions.jsonl"
MAPS_DIR = "maps"


def _to_numpy(value: Any) -> np.ndarray:  # noqa: ANN401 - tensors, arrays or numbers
    """``value`` as a NumPy array on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value)


def _item(values: Any, index: int) -> Any:  # noqa: ANN401 - a batch field of any kind
    """Entry ``index`` of a batch field, or ``None`` where the field (or the entry) is missing."""
    if values is None:
        return None
    try:
        return values[index]
    except (IndexError, TypeError):
        return None


def _batch_size(batch: Any) -> int:  # noqa: ANN401 - anomalib batches, numpy or torch
    """Number of items in ``batch``, read from whichever per-item field it has."""
    for field in ("image_path", "pred_score", "anomaly_map", "explanation", "pred_label", "image"):
        values = getattr(batch, field, None)
        if values is not None:
            return len(values)
    return 0


# Not Lightning's BasePredictionWriter: it writes in on_predict_batch_end, before anomalib's post-processor
# callback may have normalised the batch, and never on test; this writer defers each batch by one (see below).
class PredictionWriter(Callback):
    """Append one JSON line per image to ``<output_dir>/predictions.jsonl`` on test and predict.

    Each line holds ``image_path``, ``pred_score`` (float), ``pred_label`` (bool), ``explanation`` (the model's
    answer) and ``anomaly_map`` (the path of the saved map relative to ``output_dir``); missing fields are ``null``.
    The file is emptied when a test or predict run starts. Maps go to ``<output_dir>/maps/<stem>.npy``; an image
    whose stem was already used in the run gets its parent folder's name in front (``good_000.npy``).

    The lines are written after anomalib's post-processor has run on the batch (normalised scores, thresholded
    labels), wherever the writer sits in the callback list: each batch is written when the next one ends, the last
    one when the run ends.

    Args:
        output_dir: Folder for ``predictions.jsonl`` and ``maps/``. Defaults to
            ``<trainer.default_root_dir>/predictions``.
        save_maps: Save each anomaly map as ``.npy`` (``anomaly_map`` is ``null`` in the JSON otherwise).

    """

    def __init__(self, output_dir: str | Path | None = None, save_maps: bool = True) -> None:
        super().__init__()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.save_maps = save_maps
        self._used_names: set[str] = set()
        self._pending: Any = None

    @property
    def predictions_file(self) -> Path:
        """Path of the JSON-lines file."""
        if self.output_dir is None:
            msg = "PredictionWriter has no output_dir yet: pass one, or call start(default_root_dir) first."
            raise OptionError(msg)
        return self.output_dir / PREDICTIONS_FILE

    def start(self, default_root_dir: str | Path | None = None) -> None:
        """Begin a run: resolve the output folder and empty ``predictions.jsonl``."""
        if self.output_dir is None:
            self.output_dir = Path(default_root_dir if default_root_dir is not None else ".") / "predictions"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.predictions_file.write_text("", encoding="utf-8")
        self._used_names.clear()
        self._pending = None

    def write_batch(self, batch: Any) -> list[dict[str, Any]]:  # noqa: ANN401 - any anomalib batch
        """Append one JSON line per item of ``batch`` (and save the maps); returns the records written."""
        records = []
        paths = getattr(batch, "image_path", None)
        scores = getattr(batch, "pred_score", None)
        labels = getattr(batch, "pred_label", None)
        explanations = getattr(batch, "explanation", None)
        maps = getattr(batch, "anomaly_map", None)
        for index in range(_batch_size(batch)):
            image_path = _item(paths, index)
            score = _item(scores, index)
            label = _item(labels, index)
            explanation = _item(explanations, index)
            anomaly_map = _item(maps, index)
            records.append(
                {
                    "image_path": str(image_path) if image_path is not None else None,
                    "pred_score": float(_to_numpy(score).reshape(-1)[0]) if score is not None else None,
                    "pred_label": bool(_to_numpy(label).reshape(-1)[0]) if label is not None else None,
                    "explanation": str(explanation) if explanation is not None else None,
                    "anomaly_map": self._save_map(anomaly_map, image_path) if anomaly_map is not None else None,
                }
            )
        with self.predictions_file.open("a", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
        return records

    def _save_map(self, anomaly_map: Any, image_path: str | None) -> str | None:  # noqa: ANN401
        """Save one map as float32 ``H x W`` ``.npy``; returns its path relative to ``output_dir``."""
        if not self.save_maps:
            return None
        array = _to_numpy(anomaly_map).astype(np.float32)
        while array.ndim > 2 and array.shape[0] == 1:
            array = array[0]
        relative = Path(MAPS_DIR) / f"{self._unique_name(image_path)}.npy"
        target = self.predictions_file.parent / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, array)
        return relative.as_posix()

    def _unique_name(self, image_path: str | None) -> str:
        """A map file name not used yet in this run: the image's stem, then ``<parent>_<stem>``, then a counter."""
        if image_path is None:
            candidates = []
            base = "image"
        else:
            path = Path(image_path)
            base = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
            candidates = [path.stem, base]
        numbered = (f"{base}_{counter}" for counter in itertools.count(1))
        name = next(name for name in itertools.chain(candidates, numbered) if name not in self._used_names)
        self._used_names.add(name)
        return name

    # ------------------------------------------------------------------------------------------
    # Lightning hooks: write each batch once the whole callback chain (post-processor included) is done.

    def _defer(self, outputs: Any, batch: Any) -> None:  # noqa: ANN401
        """Write the previous batch (now fully post-processed) and hold this one."""
        self._flush()
        self._pending = outputs if outputs is not None else batch

    def _flush(self) -> None:
        """Write the held batch, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.write_batch(pending)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Empty ``predictions.jsonl`` for this run."""
        del pl_module
        self.start(trainer.default_root_dir)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Empty ``predictions.jsonl`` for this run."""
        del pl_module
        self.start(trainer.default_root_dir)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401 - the batch anomalib's test_step returns
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Queue the batch; it is written when the next batch or the run ends."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self._defer(outputs, batch)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Queue the batch; it is written when the next batch or the run ends."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self._defer(outputs, batch)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the last batch."""
        del trainer, pl_module
        self._flush()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the last batch."""
        del trainer, pl_module
        self._flush()
