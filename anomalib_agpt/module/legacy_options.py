"""The flat options of versions before 0.3 and where each lives now.

Checkpoints written before the option groups saved their 46 hyper-parameters flat: they are translated
on load, so those models still restore. A flat option typed by a user (a config, the command line, a
keyword) is refused with one line naming its new place, so nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from anomalib_agpt.errors import OptionError
from anomalib_agpt.module.options import GROUPS

FLAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "imagebind_checkpoint": ("weights", "imagebind_checkpoint"),
    "anomalygpt_checkpoint": ("weights", "anomalygpt_checkpoint"),
    "llm": ("weights", "llm"),
    "pandagpt_checkpoint": ("weights", "pandagpt_checkpoint"),
    "vision_heads": ("weights", "vision_heads"),
    "text_heads": ("weights", "text_heads"),
    "preset": ("weights", "preset"),
    "seed": ("weights", "seed"),
    "k_shot": ("few_shot", "k_shot"),
    "few_shot_source": ("few_shot", "source"),
    "few_shot_mode": ("few_shot", "mode"),
    "reference_round": ("few_shot", "reference_round"),
    "explain": ("explanation", "explain"),
    "question": ("explanation", "question"),
    "questions": ("explanation", "questions"),
    "label_source": ("explanation", "label_source"),
    "conversation": ("explanation", "conversation"),
    "untrained_head_parts": ("explanation", "untrained_head_parts"),
    "max_new_tokens": ("explanation", "decoding", "max_new_tokens"),
    "do_sample": ("explanation", "decoding", "do_sample"),
    "top_p": ("explanation", "decoding", "top_p"),
    "temperature": ("explanation", "decoding", "temperature"),
    "llm_dtype": ("inference", "llm_dtype"),
    "merge_lora": ("inference", "merge_lora"),
    "attn_implementation": ("inference", "attn_implementation"),
    "llm_quantization": ("inference", "llm_quantization"),
    "encoder_dtype": ("inference", "encoder_dtype"),
    "compile_encoder": ("inference", "compile_encoder"),
    "trainable": ("training", "trainable"),
    "synthesis": ("training", "synthesis"),
    "learning_rate": ("training", "learning_rate"),
    "weight_decay": ("training", "weight_decay"),
    "warmup_ratio": ("training", "warmup_ratio"),
    "pixel_loss_weight": ("training", "pixel_loss_weight"),
    "lm_loss_weight": ("training", "lm_loss_weight"),
    "few_shot_prompt_probability": ("training", "few_shot_prompt_probability"),
    "instruction_data": ("training", "instruction_data"),
    "instruction_images": ("training", "instruction_images"),
}
"""Flat option (before 0.3) -> its path in the groups. ``class_name``, ``resize_mode``, ``protocol`` and
anomalib's components kept their place."""


def new_place(flat: str) -> str:
    """The dotted place of a flat option now, e.g. ``few_shot.k_shot``."""
    return ".".join(FLAT_OPTIONS[flat])


def moved_message(names: Iterable[str], flag_prefix: str = "") -> str:
    """One line naming each flat option's new place (``flag_prefix`` ``--model.`` on the command line)."""
    moves = ", ".join(f"{flag_prefix}{name} is now {flag_prefix}{new_place(name)}" for name in names)
    return f"options moved into groups in 0.3: {moves} (see the README's Options table)."


def reject_flat_options(options: Mapping[str, Any], flag_prefix: str = "") -> None:
    """Refuse flat options a user typed, naming each one's new place.

    Raises:
        OptionError: ``options`` holds a flat option.

    """
    flat = [name for name in options if name in FLAT_OPTIONS]
    if flat:
        raise OptionError(moved_message(flat, flag_prefix))


def group_flat_options(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's saved hyper-parameters in the groups' form (flat ones moved, grouped ones kept).

    A group given both ways (never written by this package) takes the flat values over the grouped ones.
    """
    grouped: dict[str, Any] = {key: value for key, value in saved.items() if key not in FLAT_OPTIONS}
    for group in GROUPS:
        if group in grouped and not isinstance(grouped[group], Mapping):
            return grouped  # already the groups' form (dataclass instances)
    for name, value in saved.items():
        if name not in FLAT_OPTIONS:
            continue
        *parents, leaf = FLAT_OPTIONS[name]
        section = grouped
        for parent in parents:
            section[parent] = dict(section.get(parent) or {})
            section = section[parent]
        section[leaf] = value
    return grouped


def flat_options_in_args(args: Iterable[str]) -> list[str]:
    """Flat AnomalyGPT options typed as ``--model.NAME`` or ``--model.init_args.NAME`` (with or without ``=``)."""
    found = []
    for arg in args:
        for prefix in ("--model.init_args.", "--model."):
            if arg.startswith(prefix):
                name = arg[len(prefix) :].split("=", 1)[0]
                if name in FLAT_OPTIONS:
                    found.append(name)
                break
    return found


def flat_options_in_config(config: Mapping[str, Any]) -> list[str]:
    """Flat AnomalyGPT options in a parsed CLI config: ``model.init_args.NAME`` (or ``model.NAME``)."""
    model = config.get("model")
    if not isinstance(model, Mapping):
        return []
    section = model.get("init_args", model)
    if not isinstance(section, Mapping):
        return []
    return [name for name in section if name in FLAT_OPTIONS]
