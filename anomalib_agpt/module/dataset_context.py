"""What the attached datamodule decides: the category, the class name, the question and the few-shot references.

These are resolved once, before the first batch (text features and references are encoded once), from
the options, the protocol and the datamodule the trainer holds.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_agpt.data.class_names import DEFAULT_CLASS_NAME, category_to_class_name
from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.questions import default_question, paper_class_name, question_for
from anomalib_agpt.model import protocol as protocol_choices
from anomalib_agpt.model.protocol import dataset_family
from anomalib_agpt.model.references import list_reference_images, load_reference_images, round_reference_images
from anomalib_agpt.module.options import ExplanationOptions, FewShotOptions

logger = logging.getLogger(__name__)


class DatasetContext:
    """Class name, question and references of the AnomalyGPT face: a mixin before ``AnomalibModule``."""

    model: Any
    pre_processor: Any
    class_name: str | None
    resize_mode: str
    protocol: str
    few_shot_options: FewShotOptions
    explanation_options: ExplanationOptions
    questions: dict[str, str] | None
    _asked: str | None

    def _datamodule(self) -> Any:  # noqa: ANN401 - any datamodule
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _fitting(self) -> bool:
        """Whether the attached trainer is fitting (training, or validating between epochs)."""
        trainer = getattr(self, "_trainer", None)
        return trainer is not None and trainer.state.fn == TrainerFn.FITTING

    def _category(self) -> str | None:
        """The datamodule's category; ``None`` for a multi-class train set (each sample has its own)."""
        datamodule = self._datamodule()
        if datamodule is None or hasattr(datamodule, "category_of"):
            return None
        return getattr(datamodule, "category", None)

    def _class_name_from_context(self, category: str | None = None) -> str | None:
        """Constructor name; else under ``paper`` the original's rule on the question, else the category.

        ``category``: a multi-class train set's sample's (default: the datamodule's). ``None`` keeps the
        current one (a restored checkpoint's, or ``object``). While fitting, the category: the original
        trains with the dataset's class names and applies its question rule only when it evaluates.
        """
        if self.class_name:
            return category_to_class_name(self.class_name)
        category = category or self._category()
        question = self.explanation_options.question
        if self.protocol == "paper" and not self._fitting() and (question or category or self.questions):
            return paper_class_name(self.asked_question(category))
        return category_to_class_name(category) if category else None

    def asked_question(self, category: str | None = None) -> str:
        """The question put to the LLM: ``question``; else ``questions[category]`` verbatim; else the description's.

        ``category``: a multi-class train set's sample's (default: the datamodule's, else ``class_name``).
        Under ``paper`` without ``questions``, the project's own descriptions stand in for the original's
        (said once in the log).
        """
        if self.explanation_options.question:
            return self.explanation_options.question
        category = category or self._category() or self.class_name
        asked = question_for(category, self.questions) if category and self.questions else None
        if asked is None:
            if self.protocol == "paper" and self._asked is None:
                logger.warning(
                    "AnomalyGPT: protocol='paper' without questions: asking with this project's own class "
                    "descriptions, not the original's (pass explanation.questions=<your copy of the original test "
                    "script>)."
                )
            class_name = category_to_class_name(category) if category else self.model.class_name  # a restored one
            asked = default_question(class_name or DEFAULT_CLASS_NAME)
        self._asked = asked
        return asked

    def _reference_images(self) -> torch.Tensor:
        """``k_shot`` normal images through the SAME pre-processing as queries, in file order."""
        few_shot = self.few_shot_options
        k_shot = few_shot.k_shot
        datamodule = self._datamodule()
        family = dataset_family(datamodule)
        round_ = protocol_choices.reference_round(self.protocol, family, few_shot.reference_round)
        if few_shot.source is not None:
            paths = list_reference_images(few_shot.source, k_shot)
        elif round_ is not None:
            root = getattr(datamodule, "root", None)
            if root is None or family is None:
                msg = (
                    f"few_shot.reference_round={round_} picks references from an MVTecAD or Visa datamodule; "
                    "none is attached."
                )
                raise OptionError(msg)
            paths = round_reference_images(root, datamodule.category, family, k_shot, round_)
        else:
            train_data = getattr(datamodule, "train_data", None)
            if train_data is None:
                msg = (
                    f"few_shot.k_shot={k_shot} needs normal reference images: pass few_shot.source=<folder>, use a "
                    "datamodule with a train set, or call model.model.set_references(images)."
                )
                raise OptionError(msg)
            paths = sorted(train_data.samples.image_path)
            if len(paths) < k_shot:
                msg = f"few_shot.k_shot={k_shot} but the datamodule's train set holds {len(paths)} images."
                raise OptionError(msg)
            paths = paths[:k_shot]
        transform = self.pre_processor.transform if self.pre_processor is not None else None
        logger.info("AnomalyGPT: encoding %d reference images once: %s", len(paths), [str(p) for p in paths])
        return load_reference_images(paths, transform, resize_mode=self.resize_mode)
