"""Text prompts of AnomalyGPT's zero-shot branch (the class names they take live in ``data.class_names``)."""

from __future__ import annotations

from anomalib_agpt.data.class_names import (  # noqa: F401 - their home before 0.3
    DEFAULT_CLASS_NAME,
    ORIGINAL_CLASS_NAMES,
    category_to_class_name,
    resolve_original_class_name,
)

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = ("a photo of a {}.", "a photo of the {}.")


def prompt_sentences(class_name: str) -> tuple[list[str], list[str]]:
    """The 14 normal and 10 abnormal sentences for a class, state-major as the original builds them."""
    normal = [template.format(state.format(class_name)) for state in NORMAL_STATES for template in TEMPLATES]
    abnormal = [template.format(state.format(class_name)) for state in ABNORMAL_STATES for template in TEMPLATES]
    return normal, abnormal
