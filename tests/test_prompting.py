"""Prompt sentences and class-name rules."""

from __future__ import annotations

import pytest

from anomalib_agpt.model.prompting import category_to_class_name, prompt_sentences, resolve_original_class_name


def test_sentences_are_state_major_with_both_templates(meta: dict) -> None:
    normal, abnormal = prompt_sentences("bottle")
    assert normal == meta["text_prompt_sentences"]["normal"]
    assert abnormal == meta["text_prompt_sentences"]["abnormal"]
    assert (len(normal), len(abnormal)) == (14, 10)


@pytest.mark.parametrize(
    ("category", "name"),
    [("metal_nut", "metal nut"), ("bottle", "bottle"), ("", "object"), (None, "object"), ("pipe_fryum", "pipe fryum")],
)
def test_category_to_class_name(category: str | None, name: str) -> None:
    assert category_to_class_name(category) == name


def test_original_rule_reproduces_every_evaluation_prompt_resolution(meta: dict) -> None:
    """Our substring rule over the original class list gives the recorded names for the MVTec prompts."""
    for key, name in meta["class_name_resolution_for_original_eval_prompts"].items():
        if key.startswith("mvtec:"):
            category = key.split(":", 1)[1].replace("_", " ")
            assert resolve_original_class_name(f"This is a photo of a {category} for anomaly detection") == name
