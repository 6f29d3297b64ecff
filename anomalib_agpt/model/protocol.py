"""What ``protocol`` decides: anomalib's choices (the default) or the original evaluation's, choice by choice.

Every option ``paper`` sets defaults to ``None`` in :class:`~anomalib_agpt.AnomalyGPT`, meaning
"the protocol decides"; a value the user passes always wins. Choices that depend on the dataset
(MVTec AD or VisA) are made when the datamodule is known.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from anomalib_agpt.errors import OptionError

Protocol = Literal["anomalib", "paper"]
DatasetFamily = Literal["mvtec", "visa"]

PAPER_REFERENCE_ROUND: dict[DatasetFamily, int] = {"mvtec": 3, "visa": 14}
"""The original evaluation scripts' default ``--round`` (which normal training images are the references)."""
PAPER_TOP_P: dict[DatasetFamily, float] = {"mvtec": 0.1, "visa": 0.01}
"""Nucleus size of the original's sampling in its MVTec AD and VisA scripts (other data: MVTec AD's)."""

PAPER_MASK_THRESHOLD: dict[DatasetFamily, float] = {"mvtec": 0.1, "visa": 0.01}
"""The original evaluation's ground truth: masks resized bilinearly, then ``> 0.1`` (MVTec AD) or
``> max / 100`` (VisA, on its id masks; anomalib's VisA masks are 0/1, so ``> 0.01``)."""


@dataclass(frozen=True)
class Decoding:
    """How answers are generated."""

    do_sample: bool
    top_p: float
    temperature: float
    max_new_tokens: int

    def as_generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate``."""
        return dataclasses.asdict(self)


ANOMALIB_DECODING = Decoding(do_sample=False, top_p=0.1, temperature=1.0, max_new_tokens=128)
"""Greedy and short: reproducible answers (``top_p`` only matters once ``do_sample`` is set)."""


def check_protocol(protocol: str) -> None:
    """Refuse an unknown protocol with the allowed values."""
    if protocol not in typing.get_args(Protocol):
        msg = f"protocol={protocol!r}: expected 'anomalib' (default) or 'paper' (the original evaluation's choices)."
        raise OptionError(msg)


def dataset_family(datamodule: object | None) -> DatasetFamily | None:
    """``mvtec`` for anomalib's MVTec AD datamodule, ``visa`` for VisA, else ``None`` (by class name).

    A multi-class datamodule (:class:`~anomalib_agpt.data.MultiCategory`) counts as its ``dataset_class``.
    """
    kind = getattr(datamodule, "dataset_class", type(datamodule))
    name = kind.__name__.lower() if datamodule is not None and isinstance(kind, type) else ""
    if name.startswith("mvtecad") or name == "mvtec":
        return "mvtec"
    if name.startswith("visa"):
        return "visa"
    return None


def decoding(
    protocol: Protocol,
    family: DatasetFamily | None,
    do_sample: bool | None = None,
    top_p: float | None = None,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
) -> Decoding:
    """The protocol's decoding with the user's explicit values on top.

    ``paper``: sampling with top_p 0.1 (MVTec AD) or 0.01 (VisA), temperature 1, up to 512 new tokens.
    """
    base = ANOMALIB_DECODING
    if protocol == "paper":
        base = Decoding(True, PAPER_TOP_P[family or "mvtec"], 1.0, 512)
    return Decoding(
        base.do_sample if do_sample is None else do_sample,
        base.top_p if top_p is None else top_p,
        base.temperature if temperature is None else temperature,
        base.max_new_tokens if max_new_tokens is None else max_new_tokens,
    )


def llm_dtype(protocol: Protocol, chosen: str | None) -> str:
    """``paper``: fp16 on an accelerator, fp32 on CPU (``auto_fp16``); ``anomalib``: ``auto``."""
    if chosen is not None:
        return chosen
    return "auto_fp16" if protocol == "paper" else "auto"


def encoder_dtype(protocol: Protocol, chosen: str | None) -> str:
    """``paper``: fp16 towers on CUDA, fp32 on CPU (``auto``); ``anomalib``: ``fp32`` everywhere."""
    if chosen is not None:
        return chosen
    return "auto" if protocol == "paper" else "fp32"


def reference_round(protocol: Protocol, family: DatasetFamily | None, chosen: int | None) -> int | None:
    """The round that picks the references: the user's, else the original's default for the dataset under ``paper``."""
    if chosen is not None:
        return chosen
    if protocol == "paper" and family is not None:
        return PAPER_REFERENCE_ROUND[family]
    return None


def mask_threshold(protocol: Protocol, family: DatasetFamily | None) -> float | None:
    """``paper``: the original's mask rule (bilinear, then this threshold; other data: MVTec AD's); else ``None``.

    ``None`` keeps anomalib's rule: nearest-neighbour resizing of the 0/1 mask.
    """
    return PAPER_MASK_THRESHOLD[family or "mvtec"] if protocol == "paper" else None
