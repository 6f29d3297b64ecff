"""The option groups: nested CLI flags and YAML sections, mappings accepted, flat options refused by name."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomalib_agpt import AnomalyGPT, FewShotOptions, TrainingOptions
from anomalib_agpt.apps.configs import packaged_configs
from anomalib_agpt.errors import OptionError
from anomalib_agpt.module import options as groups
from anomalib_agpt.module.legacy_options import FLAT_OPTIONS
from anomalib_agpt.module.options import GROUPS, as_group, merged_options

from .test_cli_errors import non_empty_lines, run_main


def test_the_constructor_takes_a_few_groups() -> None:
    parameters = inspect.signature(AnomalyGPT.__init__).parameters
    assert len(parameters) - 1 <= 15  # self aside
    for name in GROUPS:
        assert dataclasses.is_dataclass(parameters[name].default)


def test_every_flat_option_has_a_field_in_its_group() -> None:
    """The translation table names real fields: a flat option never lands nowhere."""
    classes = {
        "weights": groups.WeightOptions,
        "few_shot": groups.FewShotOptions,
        "explanation": groups.ExplanationOptions,
        "inference": groups.InferenceOptions,
        "training": groups.TrainingOptions,
    }
    for flat, place in FLAT_OPTIONS.items():
        group = classes[place[0]]
        if len(place) == 3:  # the one nested group
            assert place[1] == "decoding"
            group = groups.DecodingOptions
        assert place[-1] in {each.name for each in dataclasses.fields(group)}, flat


def test_a_group_accepts_a_mapping_and_names_unknown_fields() -> None:
    assert as_group(FewShotOptions, {"k_shot": 2, "mode": "fuse"}, "few_shot") == FewShotOptions(k_shot=2, mode="fuse")
    nested = as_group(groups.ExplanationOptions, {"decoding": {"top_p": 0.5}}, "explanation")
    assert nested.decoding == groups.DecodingOptions(top_p=0.5)
    with pytest.raises(OptionError, match=r"few_shot: unknown option\(s\) \['kshot'\]; FewShotOptions has \["):
        as_group(FewShotOptions, {"kshot": 2}, "few_shot")


def test_merged_options_update_groups_field_by_field() -> None:
    saved = {"weights": {"llm": "a", "seed": 1}, "explanation": {"explain": True, "decoding": {"top_p": 0.1}}}
    given = {"weights": {"llm": "b"}, "explanation": {"decoding": {"max_new_tokens": 8}}, "protocol": "paper"}
    assert merged_options(saved, given) == {
        "weights": {"llm": "b", "seed": 1},
        "explanation": {"explain": True, "decoding": {"top_p": 0.1, "max_new_tokens": 8}},
        "protocol": "paper",
    }
    replaced = merged_options(saved, {"training": TrainingOptions(trainable=["decoder"])})
    assert replaced["training"] == TrainingOptions(trainable=["decoder"])


def test_print_config_shows_the_groups_with_nested_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", "--model", "AnomalyGPT", "--model.few_shot.k_shot", "4", "--model.explanation.decoding.top_p=0.5"]
    status, printed = run_main([*args, "--print_config"], capsys)
    assert status == 0
    init_args = yaml.safe_load(printed)["model"]["init_args"]
    assert init_args["few_shot"]["k_shot"] == 4
    assert init_args["explanation"]["decoding"]["top_p"] == 0.5
    assert set(GROUPS) <= set(init_args)
    assert init_args["training"]["learning_rate"] == TrainingOptions().learning_rate


@pytest.mark.parametrize("flag", ["--model.k_shot", "--model.init_args.k_shot"])
def test_a_flat_flag_gets_one_line_naming_its_place(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, printed = run_main(["fit", "--model", "AnomalyGPT", flag, "4"], capsys)
    assert status == 2
    lines = non_empty_lines(printed)
    assert lines[0] == (
        "error: options moved into groups in 0.3: --model.k_shot is now --model.few_shot.k_shot "
        "(see the README's Options table)."
    )
    assert len(lines) == 2  # the error and the --verbose hint


def test_a_flat_option_in_a_config_gets_one_line_naming_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "old.yaml"
    model: dict[str, Any] = {"class_path": "anomalib_agpt.AnomalyGPT", "init_args": {"k_shot": 1, "max_new_tokens": 8}}
    config.write_text(yaml.safe_dump({"model": model}))
    status, printed = run_main(["test", "--config", str(config)], capsys)
    assert status == 2
    assert non_empty_lines(printed)[0] == (
        f"error: {config}: options moved into groups in 0.3: model.init_args.k_shot is now "
        "model.init_args.few_shot.k_shot, model.init_args.max_new_tokens is now "
        "model.init_args.explanation.decoding.max_new_tokens (see the README's Options table)."
    )


def test_packaged_configs_hold_no_flat_option() -> None:
    for name, path in packaged_configs().items():
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        init_args = model.get("init_args") or {} if isinstance(model, dict) else {}
        assert not set(init_args) & set(FLAT_OPTIONS), name
