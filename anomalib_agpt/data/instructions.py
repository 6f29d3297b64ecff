"""Instruction data (image + conversation JSON, PandaGPT or LLaVA style) mixed into training.

The original trains with PandaGPT's visual-instruction samples between its anomaly batches so that the
prompt learner's tokens keep the LLM answering ordinary questions about images. The user supplies the
file; this module reads it, checks it whole before any training, and picks each step's samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalib_agpt.data.images import read_rgb_image
from anomalib_agpt.errors import MissingFileError, OptionError

IMAGE_KEYS = ("image_name", "image")
"""Where an entry names its image: PandaGPT's ``image_name``, LLaVA's ``image``."""

CONVERSATION_KEYS = ("conversation", "conversations")
"""Where an entry keeps its turns: PandaGPT's ``conversation``, LLaVA's ``conversations``."""

HUMAN_ROLES = frozenset({"human", "user"})
ANSWER_ROLES = frozenset({"gpt", "assistant"})
IMAGE_PLACEHOLDER = "<image>"
"""LLaVA's marker for the image inside the first question; the image goes in front of the question here."""

DEFAULT_SUFFIX = ".jpg"
"""PandaGPT names its COCO images without a suffix; its loader adds ``.jpg``."""

INSTRUCTION_STREAM = 0x1A57
"""Key that separates the instruction order's random stream from the synthesis's (same seed, epoch)."""


@dataclass(frozen=True)
class InstructionSample:
    """One instruction sample: an image, the first question asked about it and its first answer."""

    image_path: Path
    question: str
    answer: str


def _first_value(entry: dict[str, Any], keys: Sequence[str]) -> Any:  # noqa: ANN401
    return next((entry[key] for key in keys if key in entry), None)


def _turn_text(turn: Any, roles: frozenset[str]) -> str | None:  # noqa: ANN401
    """A turn's text if it is a ``{"from": role, "value": text}`` of one of ``roles``, else ``None``."""
    if not isinstance(turn, dict) or str(turn.get("from", "")).lower() not in roles:
        return None
    value = turn.get("value")
    return value if isinstance(value, str) and value.strip() else None


def _entry_sample(entry: Any, index: int, path: Path, image_root: Path) -> InstructionSample:  # noqa: ANN401
    """The entry's image and first question/answer pair; an error names the entry and what it lacks."""
    where = f"instruction_data '{path}', entry {index}"
    if not isinstance(entry, dict):
        msg = f"{where}: expected an object with an image and a conversation, got {type(entry).__name__}."
        raise OptionError(msg)
    image = _first_value(entry, IMAGE_KEYS)
    if not isinstance(image, str) or not image:
        msg = f"{where}: no image name; expected one of the keys {list(IMAGE_KEYS)} with a file name."
        raise OptionError(msg)
    turns = _first_value(entry, CONVERSATION_KEYS)
    if not isinstance(turns, list) or len(turns) < 2:
        msg = f"{where}: expected {' or '.join(CONVERSATION_KEYS)} to be a list of at least 2 turns."
        raise OptionError(msg)
    question, answer = _turn_text(turns[0], HUMAN_ROLES), _turn_text(turns[1], ANSWER_ROLES)
    if question is None or answer is None:
        msg = (
            f"{where}: expected the first turn to be a question (from 'human') and the second its answer "
            "(from 'gpt'), each with a non-empty 'value'."
        )
        raise OptionError(msg)
    image_path = image_root / image
    if not image_path.suffix:
        image_path = image_path.with_name(image_path.name + DEFAULT_SUFFIX)
    question = question.replace(IMAGE_PLACEHOLDER, "").strip()
    return InstructionSample(image_path=image_path, question=question, answer=answer.strip())


def load_instruction_data(path: str | Path, image_root: str | Path | None = None) -> list[InstructionSample]:
    """Every entry of an instruction JSON as :class:`InstructionSample`, checked whole.

    Each entry keeps its first question/answer pair only, as the original trains. Image names are
    relative to ``image_root`` (default: the JSON's folder); one without a suffix gets ``.jpg``
    (PandaGPT's names). LLaVA's ``<image>`` marker is removed from the question.

    Raises:
        MissingFileError: the JSON or any image is missing (all missing images are counted, the first named).
        OptionError: the file is not JSON, holds no entries, or an entry lacks an image or a question/answer.

    """
    path = Path(path)
    if not path.is_file():
        msg = f"instruction_data '{path}' does not exist; expected a JSON list of image + conversation entries."
        raise MissingFileError(msg)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        msg = f"instruction_data '{path}' is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        raise OptionError(msg) from error
    except UnicodeDecodeError as error:
        msg = f"instruction_data '{path}' is not UTF-8 text: {error.reason} at byte {error.start}."
        raise OptionError(msg) from error
    if not isinstance(entries, list) or not entries:
        msg = f"instruction_data '{path}' holds no samples; expected a non-empty JSON list of entries."
        raise OptionError(msg)
    root = Path(image_root) if image_root is not None else path.parent
    if not root.is_dir():
        msg = f"instruction_images '{root}' is not a folder; expected the folder the JSON's image names are in."
        raise MissingFileError(msg)
    samples = [_entry_sample(entry, index, path, root) for index, entry in enumerate(entries)]
    missing = [sample.image_path for sample in samples if not sample.image_path.is_file()]
    if missing:
        msg = (
            f"instruction_data '{path}': {len(missing)} of {len(samples)} images are missing under '{root}', "
            f"e.g. '{missing[0]}' (set instruction_images to the folder that holds them)."
        )
        raise MissingFileError(msg)
    return samples


@dataclass
class InstructionBatch:
    """One step's instruction samples, images pre-processed as the training images are."""

    images: torch.Tensor
    questions: list[str]
    answers: list[str]


class InstructionMix:
    """Which instruction samples each training step takes, as a function of (seed, epoch, step, rank).

    Each epoch draws a fresh order of the whole set; step ``i`` of process ``rank`` takes the next
    ``count`` samples of it (wrapping around when the set is shorter than the epoch), so a resumed run
    takes the same samples as an uninterrupted one and DDP processes take different ones.
    """

    def __init__(self, samples: Sequence[InstructionSample], seed: int) -> None:
        if not samples:
            msg = "the instruction mix needs at least one sample."
            raise OptionError(msg)
        self.samples = list(samples)
        self.seed = seed
        self._order: tuple[int, np.ndarray] | None = None
        """The last epoch's order (drawn once per epoch, not per step)."""

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of the whole set, from ``(seed, epoch)``."""
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, INSTRUCTION_STREAM])
            self._order = (epoch, rng.permutation(len(self.samples)))
        return self._order[1]

    def indices(self, epoch: int, step: int, count: int, replicas: int = 1, rank: int = 0) -> list[int]:
        """Indices of the samples step ``step`` of process ``rank`` (of ``replicas``) takes in ``epoch``."""
        order = self.order(epoch)
        start = (step * replicas + rank) * count
        return [int(order[(start + offset) % len(order)]) for offset in range(count)]

    def batch(
        self,
        epoch: int,
        step: int,
        count: int,
        transform: Callable[[torch.Tensor], torch.Tensor],
        replicas: int = 1,
        rank: int = 0,
        device: torch.device | str = "cpu",
    ) -> InstructionBatch:
        """The step's samples: read (errors name the file), moved to ``device``, then ``transform`` (to one size).

        The resize runs where the model runs: on a GPU it costs next to nothing beside the step.
        """
        chosen = [self.samples[index] for index in self.indices(epoch, step, count, replicas, rank)]
        images = [read_rgb_image(sample.image_path).unsqueeze(0).to(device) for sample in chosen]
        return InstructionBatch(
            images=torch.cat([transform(image) for image in images]),
            questions=[sample.question for sample in chosen],
            answers=[sample.answer for sample in chosen],
        )
