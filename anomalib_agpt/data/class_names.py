"""Class names: a dataset's category as the prompts and questions name it, and the original's class list.

At the bottom of the house because the zero-shot prompts, the questions and the face all use them.
"""

from __future__ import annotations

DEFAULT_CLASS_NAME = "object"

ORIGINAL_CLASS_NAMES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
    "object",
    "candle",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni",
    "pcb",
    "pipe fryum",
)
"""The original's class list, in its order (its first substring match in the prompt wins)."""


def category_to_class_name(category: str | None) -> str:
    """Turn a datamodule category into a prompt name: ``metal_nut`` -> ``metal nut``; empty -> ``object``."""
    name = (category or "").replace("_", " ").strip()
    return name or DEFAULT_CLASS_NAME


def resolve_original_class_name(prompt: str) -> str:
    """The class name the original code would use for ``prompt``: its first list entry found in it.

    This reproduces quirks of the original evaluation: VisA ``capsules`` -> ``capsule``,
    ``pipe_fryum`` -> ``fryum``, ``pcb1..4`` -> ``pcb``, ``macaroni1/2`` -> ``macaroni`` and
    ``chewinggum`` -> ``object`` (its description misspells the name).
    """
    return next((name for name in ORIGINAL_CLASS_NAMES if name in prompt), DEFAULT_CLASS_NAME)
