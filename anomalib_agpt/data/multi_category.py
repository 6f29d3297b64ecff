"""One train set over several categories of MVTec AD or VisA, to train one AnomalyGPT for all classes."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base import AnomalibDataset
from torch.utils.data import DataLoader

from anomalib_agpt.errors import OptionError, OptionTypeError

DATASETS = {"mvtecad": "anomalib.data.MVTecAD", "mvtec": "anomalib.data.MVTecAD", "visa": "anomalib.data.Visa"}
"""Short names of the datamodules ``dataset`` may name (any case); a dotted class path is taken as it is."""

CATEGORY_TABLES = {"MVTecAD": "anomalib.data.datasets.image.mvtecad", "Visa": "anomalib.data.datasets.image.visa"}
"""Where anomalib lists each dataset's categories (``CATEGORIES``), the default ``categories``."""


def datamodule_class(dataset: str) -> type[AnomalibDataModule]:
    """The datamodule class ``dataset`` names: ``MVTecAD``, ``Visa`` or a dotted class path."""
    path = DATASETS.get(dataset.lower(), dataset)
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name) if module_name else None
    except ImportError:
        found = None
    if not (isinstance(found, type) and issubclass(found, AnomalibDataModule)):
        msg = f"dataset '{dataset}' is not a datamodule; expected MVTecAD, Visa or a datamodule's class path."
        raise OptionError(msg)
    return found


class MultiCategory(AnomalibDataModule):
    """Normal train images of several categories in one train set; tests stay per category.

    As AnomalyGPT's original training: one model for every class of the dataset, each sample with its
    own class name. The train set concatenates each category's train set (anomalib's own datasets and
    batches); a sample's category is :meth:`category_of` its ``image_path``. The model reads it from
    there for the text features, synthesis settings and question of each sample.

    Validation and test are per category, because the model's zero-shot text features (and question)
    are those of one class: there is no validation while fitting, and ``test`` asks for the category's
    own datamodule, e.g. ``for c in categories: engine.test(model, datamodule=MVTecAD(root, category=c))``
    (``anomalib test --data MVTecAD --data.category <c> --ckpt_path <multi-class checkpoint>``).

    CLI: ``--data anomalib_agpt.data.MultiCategory --data.dataset MVTecAD --data.root ./datasets/MVTecAD
    --data.categories [bottle, cable]``.

    Args:
        dataset: ``MVTecAD``, ``Visa`` or the class path of a datamodule with ``root`` and ``category``.
        root: The dataset's root, as its own datamodule takes it.
        categories: The categories to train on; default: all of the dataset's (anomalib's list).
        train_batch_size: Train batch size (samples of any category mixed in a batch).
        eval_batch_size: Kept for the per-category datamodules' parity; unused here.
        num_workers: Data loader workers.
        seed: Seed for anomalib's splits (unused with the datasets' own folders).

    """

    def __init__(
        self,
        dataset: str = "MVTecAD",
        root: str | Path | None = None,
        categories: Sequence[str] | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_split_mode="none",
            test_split_mode="none",
            seed=seed,
        )
        self.dataset_class = datamodule_class(dataset)
        if categories is not None and (isinstance(categories, str) or not all(isinstance(c, str) for c in categories)):
            msg = f"categories must be a list of category names, got {categories!r}."
            raise OptionTypeError(msg)
        self.categories = tuple(categories) if categories is not None else self._all_categories()
        if not self.categories:
            msg = "categories is empty; name at least one category (or leave it out for all of the dataset's)."
            raise OptionError(msg)
        if len(set(self.categories)) != len(self.categories):
            msg = f"categories names a category twice: {list(self.categories)}."
            raise OptionError(msg)
        root_kwargs: dict[str, Any] = {} if root is None else {"root": root}
        common = {"train_batch_size": train_batch_size, "eval_batch_size": eval_batch_size, "num_workers": 0}
        self.datamodules = {c: self.dataset_class(**root_kwargs, category=c, **common) for c in self.categories}
        self.root = next(iter(self.datamodules.values())).root
        self._category_by_path: dict[str, str] = {}

    def _all_categories(self) -> tuple[str, ...]:
        known = self._known_categories()
        if known is None:
            msg = f"{self.dataset_class.__name__} has no known category list: pass categories."
            raise OptionError(msg)
        return known

    @property
    def name(self) -> str:
        """The dataset's name (``MVTecAD``), so runs land in ``<model>/<dataset>/all`` or ``.../<a>+<b>``."""
        return self.dataset_class.__name__

    @property
    def category(self) -> str:
        """The run's folder name: ``all`` for the dataset's whole list, else the categories joined by ``+``.

        Not a class name: the model takes each sample's class from :meth:`category_of`.
        """
        return "+".join(self.categories) if self.categories != self._known_categories() else "all"

    @category.setter
    def category(self, category: str) -> None:
        del category  # set by the base class's constructor; the categories decide

    def _known_categories(self) -> tuple[str, ...] | None:
        table = CATEGORY_TABLES.get(self.dataset_class.__name__)
        return tuple(importlib.import_module(table).CATEGORIES) if table else None

    def prepare_data(self) -> None:
        """Each category's own preparation (download, VisA's split)."""
        for datamodule in self.datamodules.values():
            datamodule.prepare_data()

    def _setup(self, _stage: str | None = None) -> None:
        train_sets: list[AnomalibDataset] = []
        for category, datamodule in self.datamodules.items():
            datamodule.setup()
            train_sets.append(datamodule.train_data)
            self._category_by_path |= {str(path): category for path in datamodule.train_data.samples.image_path}
        train = train_sets[0]
        for other in train_sets[1:]:
            train = train + other
        self.train_data = train

    def _create_test_split(self) -> None:
        """No test set here (tests are per category)."""

    def _create_val_split(self) -> None:
        """No validation set here (tests are per category)."""

    def category_of(self, image_path: str | Path) -> str:
        """The category of a train image (by its path; else the folder three above the file: ``<c>/train/good``)."""
        return self._category_by_path.get(str(image_path)) or Path(image_path).parts[-4]

    def val_dataloader(self) -> list[DataLoader]:
        """No validation while fitting (the text features are one class's): test each category after."""
        return []

    def test_dataloader(self) -> DataLoader:
        """Tests are per category: use the category's own datamodule."""
        msg = (
            f"MultiCategory trains only; test each category with its own datamodule, e.g. "
            f"{self.name}(root='{self.root}', category='{self.categories[0]}')."
        )
        raise OptionError(msg)

    predict_dataloader = test_dataloader
