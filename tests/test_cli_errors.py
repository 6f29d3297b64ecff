"""A user's mistake costs one clear line: ``error: <message>``, exit status 2, no traceback, nothing lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from anomalib_agpt.apps import cli
from anomalib_agpt.apps.workspace import WorkspaceState, restore, restored_on_failure
from anomalib_agpt.data import make_synthetic_mvtec
from anomalib_agpt.errors import OptionError
from anomalib_agpt.module.legacy_options import FLAT_OPTIONS, new_place

from .conftest import FIXTURES
from .test_cli import ENV, script

CATEGORY = "weave"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return make_synthetic_mvtec(
        root, categories=(CATEGORY,), num_train=3, num_test_good=2, num_test_defect=1, image_size=64
    )


def fit_args(weights: dict[str, Any], data_root: Path, results: Path, **model: object) -> list[str]:
    options = {**weights, "k_shot": 1, **model}
    return [
        "fit",
        "--model",
        "AnomalyGPT",
        *(f"--model.{new_place(key) if key in FLAT_OPTIONS else key}={value}" for key, value in options.items()),
        "--data",
        "MVTecAD",
        f"--data.root={data_root}",
        f"--data.category={CATEGORY}",
        "--data.num_workers=0",
        "--trainer.logger=false",
        f"--default_root_dir={results}",
    ]


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``anomalib-agpt ARGS`` in this process: the exit status and everything printed."""
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    captured = capsys.readouterr()
    return int(exited.value.code), captured.out + captured.err


def non_empty_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"anomalygpt_checkpoint": FIXTURES / "missing.pt"}, "missing.pt' not found"),
        ({"anomalygpt_checkpoint": FIXTURES / "imagebind.pth"}, "looks like an ImageBind checkpoint"),
        ({"vision_heads": 7}, "vision_heads=7 does not divide the tower width"),
        ({"k_shot": -1}, "k_shot=-1: expected 0"),
    ],
)
def test_option_mistakes_end_in_one_error_line(
    weights: dict[str, Any],
    data_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, object],
    expected: str,
) -> None:
    status, printed = run_main(fit_args(weights, data_root, tmp_path / "results", **change), capsys)
    lines = non_empty_lines(printed)
    assert status == 2
    assert "Traceback" not in printed
    assert lines[-2].startswith("error: ")
    assert expected in lines[-2]
    assert cli.VERBOSE_ENV in lines[-1]
    assert not (tmp_path / "results").exists()  # the model failed before anomalib made a workspace


def test_a_failed_run_leaves_versions_and_latest_as_they_were(
    weights: dict[str, Any], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """k_shot above the train set fails after anomalib made v1 and moved ``latest``: both are undone."""
    results = tmp_path / "results"
    cli.main(fit_args(weights, data_root, results))
    printed = capsys.readouterr().out
    workspace = results / "AnomalyGPT" / "MVTecAD" / CATEGORY
    checkpoint = workspace / "latest" / "weights" / "lightning" / "model.ckpt"
    assert checkpoint.is_file()
    assert f"checkpoint: {workspace / 'v0' / 'weights' / 'lightning' / 'model.ckpt'}" in printed
    before = sorted(p.name for p in workspace.iterdir())

    status, printed = run_main(fit_args(weights, data_root, results, k_shot=10), capsys)

    assert status == 2
    assert non_empty_lines(printed)[-2] == "error: few_shot.k_shot=10 but the datamodule's train set holds 3 images."
    assert sorted(p.name for p in workspace.iterdir()) == before == ["latest", "v0"]
    assert (workspace / "latest").resolve() == (workspace / "v0").resolve()
    assert checkpoint.is_file()


def test_predict_skips_an_unreadable_image_and_says_so(
    weights: dict[str, Any], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One corrupt PNG in the folder: the others are predicted, the file is named and counted at the end."""
    results = tmp_path / "results"
    cli.main(fit_args(weights, data_root, results))
    checkpoint = results / "AnomalyGPT" / "MVTecAD" / CATEGORY / "latest" / "weights" / "lightning" / "model.ckpt"
    folder = tmp_path / "images"
    shutil.copytree(data_root / CATEGORY / "test" / "good", folder)
    good = sorted(folder.iterdir())
    broken = folder / "broken.png"
    broken.write_bytes(good[0].read_bytes()[:300])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="broken.png"):
        cli.main(
            [
                "predict",
                "--model",
                "AnomalyGPT",
                *(f"--model.{new_place(key)}={value}" for key, value in {**weights, "k_shot": 1}.items()),
                f"--ckpt_path={checkpoint}",
                f"--data={folder}",
                f"--default_root_dir={results}",
                "--trainer.callbacks+=anomalib_agpt.callbacks.PredictionWriter",
                f"--trainer.callbacks.output_dir={tmp_path / 'out'}",
            ]
        )
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["image_path"] for line in lines) == [str(path) for path in good]
    assert non_empty_lines(capsys.readouterr().out)[-1] == f"skipped 1 unreadable image(s): {broken}"


def test_verbose_keeps_the_traceback(
    weights: dict[str, Any], data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.VERBOSE_ENV, "1")
    with pytest.raises(Exception, match="vision_heads=7 does not divide"):
        cli.main(fit_args(weights, data_root, tmp_path / "results", vision_heads=7))


def test_restore_removes_only_what_the_run_made(tmp_path: Path) -> None:
    root = tmp_path / "results"
    (root / "M" / "D" / "c" / "v0").mkdir(parents=True)
    (root / "M" / "D" / "c" / "latest").symlink_to(root / "M" / "D" / "c" / "v0")
    (root / "keep.txt").write_text("x")
    before = WorkspaceState.read(root)
    (root / "M" / "D" / "c" / "v1" / "weights").mkdir(parents=True)
    (root / "M" / "D" / "c" / "latest").unlink()
    (root / "M" / "D" / "c" / "latest").symlink_to(root / "M" / "D" / "c" / "v1")
    (root / "M" / "E" / "d" / "v0").mkdir(parents=True)

    removed = restore(root, before)

    assert sorted(p.relative_to(root).as_posix() for p in removed) == ["M/D/c/v1", "M/E", "M/E/d", "M/E/d/v0"]
    assert os.readlink(root / "M" / "D" / "c" / "latest") == str(root / "M" / "D" / "c" / "v0")
    assert (root / "keep.txt").is_file()


def versioned_root(tmp_path: Path) -> tuple[Path, Path, WorkspaceState]:
    """A results folder with v0 and ``latest`` -> v0, its recorded state, then a new v1 that ``latest`` points at."""
    category = tmp_path / "results" / "M" / "D" / "c"
    (category / "v0").mkdir(parents=True)
    (category / "latest").symlink_to(category / "v0")
    before = WorkspaceState.read(tmp_path / "results")
    (category / "v1" / "weights" / "lightning").mkdir(parents=True)
    (category / "latest").unlink()
    (category / "latest").symlink_to(category / "v1")
    return tmp_path / "results", category, before


def test_restore_never_removes_a_version_that_holds_a_checkpoint(tmp_path: Path) -> None:
    root, category, before = versioned_root(tmp_path)
    (category / "v1" / "weights" / "lightning" / "model.ckpt").write_bytes(b"trained")
    assert restore(root, before) == []
    assert (category / "v1" / "weights" / "lightning" / "model.ckpt").read_bytes() == b"trained"
    assert os.readlink(category / "latest") == str(category / "v1")


@pytest.mark.parametrize(
    ("error", "rolled_back"),
    [
        (OptionError("k_shot=10 but the train set holds 3 images."), True),
        (RuntimeError("CUDA out of memory at epoch 50"), False),
        (SystemExit(1), False),  # what Lightning turns Ctrl-C during fit into
        (KeyboardInterrupt(), False),
    ],
)
def test_only_a_run_refused_for_a_user_s_mistake_is_rolled_back(
    tmp_path: Path, error: BaseException, rolled_back: bool
) -> None:
    root = tmp_path / "results"
    category = root / "M" / "D" / "c"
    (category / "v0").mkdir(parents=True)
    (category / "latest").symlink_to(category / "v0")

    def failing_run() -> None:
        with restored_on_failure(root):
            (category / "v1").mkdir()
            (category / "latest").unlink()
            (category / "latest").symlink_to(category / "v1")
            raise error

    with pytest.raises(type(error)):
        failing_run()
    assert (category / "v1").exists() is not rolled_back
    assert os.readlink(category / "latest") == str(category / ("v0" if rolled_back else "v1"))


def test_anomalib_s_own_subcommands_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """``install`` (and the pipelines) are not Engine methods: they go to anomalib's own dispatch."""
    import anomalib.cli.install

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(anomalib.cli.install, "anomalib_install", lambda **kwargs: calls.append(kwargs))
    cli.run_anomalib(["install", "--option", "core"])
    assert calls == [{"option": "core", "verbose": False}]


@pytest.fixture(scope="module")
def fresh_processes(weights: dict[str, Any], data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same mistake (``vision_heads=7``) through both console scripts, each a fresh process, run side by side.

    ``anomalib-agpt`` and the stock ``anomalib`` with the dotted path; both start at once (each pays an
    interpreter start and anomalib's import, the only way to see everything a user's terminal shows).
    """
    work = tmp_path_factory.mktemp("fresh")
    args = fit_args(weights, data_root, work / "results", vision_heads=7)
    stock_env = {key: value for key, value in ENV.items() if key != cli.VERBOSE_ENV}
    commands = {
        "anomalib-agpt": ([script("anomalib-agpt"), *args], ENV),
        "anomalib": ([script("anomalib"), *args[:2], "anomalib_agpt.AnomalyGPT", *args[3:]], stock_env),
    }
    started = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
        for name, (command, env) in commands.items()
    }
    return {name: (process.communicate(timeout=300)[0], process.returncode) for name, process in started.items()}


def test_whole_output_of_a_mistake_is_short_from_a_fresh_process(fresh_processes: dict) -> None:
    """Import warnings, banners and all: at most 25 non-empty lines, ending in the product's message."""
    printed, status = fresh_processes["anomalib-agpt"]
    lines = non_empty_lines(printed)
    assert status == 2
    assert len(lines) <= 25, lines
    assert lines[-2].startswith("error: vision_heads=7 does not divide the tower width")


def test_stock_anomalib_cli_ends_with_the_products_message(fresh_processes: dict) -> None:
    """The stock CLI keeps its traceback (it cannot be changed) but the last line is the product's message."""
    printed, status = fresh_processes["anomalib"]
    assert status != 0
    last = non_empty_lines(printed)[-1]
    assert last == "error: vision_heads=7 does not divide the tower width 64; pass a divisor of 64."


def test_demo_refuses_a_missing_llm_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_agpt.apps.demo import QUIET_ENV

    for name, value in QUIET_ENV.items():  # the demo's process settings: it runs here instead of starting again
        monkeypatch.setenv(name, os.environ.get(name) or value)
    output = tmp_path / "demo"
    status, printed = run_main(["demo", "--quick", "--llm", str(tmp_path / "no_llm"), "--output", str(output)], capsys)
    assert status == 2
    assert non_empty_lines(printed)[0].startswith(f"error: --llm: weight file '{tmp_path / 'no_llm'}' not found")
    assert not output.exists()


def test_ctrl_c_ends_with_one_line_and_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "dispatch", interrupted)
    status, printed = run_main(["leaderboard"], capsys)
    assert (status, printed) == (130, "interrupted\n")


def test_the_remembered_error_keeps_no_frames_alive_and_is_still_found_in_a_wrapper_s_text() -> None:
    import gc
    import weakref

    from anomalib_agpt.errors import find_user_error

    class Weights:
        """Stands for a large tensor held by the frame that raised."""

    def refuse() -> weakref.ref:
        weights = Weights()
        held = weakref.ref(weights)
        try:
            raise OptionError("k_shot=10 but the train set holds 3 images.")
        except OptionError:
            pass
        return held

    held = refuse()
    gc.collect()
    assert held() is None
    wrapper = ValueError('Does not validate against any of the Union subtypes: "k_shot=10 but the train set holds 3')
    assert find_user_error(wrapper) is None  # a different (cut) text is not claimed
    found = find_user_error(ValueError("Problem: k_shot=10 but the train set holds 3 images. (more)"))
    assert isinstance(found, OptionError)
    assert str(found) == "k_shot=10 but the train set holds 3 images."
