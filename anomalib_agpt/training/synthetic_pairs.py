"""Normal images in, (normal, synthetic anomalous) training pairs out: the dataset the trainer draws from.

Each item's anomaly comes from :func:`~anomalib_agpt.training.synthesis.synthesize` with a generator
seeded by ``(seed, epoch, index)``, so an item never depends on loading order, worker or process.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from anomalib_agpt.errors import OptionError, OptionTypeError
from anomalib_agpt.explanation.conversation import NORMAL_ANSWER
from anomalib_agpt.training.synthesis_settings import SynthesisSettings
from anomalib_agpt.training.synthetic_anomalies import synthesize


def _item_image(item: Any) -> torch.Tensor:  # noqa: ANN401 - any dataset item type is accepted
    """The image of a dataset item: a tensor itself, a mapping's "image", or an object's ``.image``."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, Mapping):
        return item["image"]
    image = getattr(item, "image", None)
    if image is None:
        raise OptionTypeError(f"dataset items must be tensors, mappings with 'image' or have .image, got {type(item)}")
    return image


def _pick_source(index: int, length: int, rng: np.random.Generator) -> int:
    """Uniformly one of the *other* indices (the item itself only when it is alone)."""
    if length <= 1:
        return index
    other = int(rng.integers(length - 1))
    return other + 1 if other >= index else other


class SyntheticPairs(Dataset):
    """Turn a dataset of normal images into (normal, synthetic anomalous) training pairs.

    Why pairs: the trainer shows the LLM both twins, so it learns to answer "no" and "yes, at ..."
    about the same object. All randomness of item ``index`` comes from
    ``numpy.random.default_rng([seed, epoch, index])``, so items are reproducible in any order, in
    any worker and after a resume. Call ``set_epoch`` before each epoch; with ``persistent_workers``
    the workers keep their own copy, so recreate the loader (or its iterator) to pass the epoch on.
    """

    def __init__(
        self,
        dataset: Any,  # noqa: ANN401 - any map-style dataset with image items
        settings: SynthesisSettings | Callable[[int], SynthesisSettings],
        seed: int = 0,
    ) -> None:
        if seed < 0:
            raise OptionError(f"seed must be non-negative, got {seed}")
        self.dataset = dataset
        self.settings = settings
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh anomalies for a new epoch (still reproducible per epoch)."""
        if epoch < 0:
            raise OptionError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _settings_for(self, index: int) -> SynthesisSettings:
        """Settings may depend on the item (e.g. its category): a callable gets the index."""
        if isinstance(self.settings, SynthesisSettings):
            return self.settings
        return self.settings(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        length = len(self)
        index = operator.index(index)
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(f"index {index} out of range for {length} items")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        target = _item_image(self.dataset[index])
        source = _item_image(self.dataset[_pick_source(index, length, rng)])
        sample = synthesize(target, source, self._settings_for(index), rng)
        return {
            "normal_image": target,
            "anomalous_image": sample.image,
            "mask": sample.mask,
            "answer": sample.answer,
            "normal_answer": NORMAL_ANSWER,
            "centers": sample.centers,
            "index": index,
        }


def collate_pairs(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch ``SyntheticPairs`` items: images and masks stacked, text and centres kept as lists."""
    if not samples:
        raise OptionError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif key == "index":
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch
