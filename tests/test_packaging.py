"""A pip user has everything: the wheel carries the LICENSE and the configs, and runs them by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from anomalib_agpt.apps.configs import packaged_config, packaged_configs, resolve_config_flags

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (the checkout stays clean), with this environment's setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "tests", "benchmarks", "*_output", "build", "*.egg-info"),
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", work, source]
    subprocess.run([str(c) for c in command], check=True, capture_output=True)
    (found,) = work.glob("anomalib_agpt-*.whl")
    return found


def test_wheel_ships_license_and_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    shipped = {
        name.removeprefix("anomalib_agpt/configs/") for name in names if name.startswith("anomalib_agpt/configs/")
    }
    in_repo = {path.relative_to(REPO / "configs").as_posix() for path in (REPO / "configs").rglob("*.yaml")}
    assert shipped == in_repo
    assert len(in_repo) >= 10


def test_installed_wheel_prints_a_packaged_config_by_name(wheel: Path, tmp_path: Path) -> None:
    """Not the source tree: the wheel installed into a folder of its own, run from an empty folder."""
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import anomalib_agpt; print(anomalib_agpt.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=empty,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)
    printed = subprocess.run(
        [str(target / "bin" / "anomalib-agpt"), "fit", "--config", "mvtec_few_shot", "--print_config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=empty,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    config = yaml.safe_load(printed.stdout)
    expected = yaml.safe_load((REPO / "configs" / "mvtec_few_shot.yaml").read_text())
    assert config["model"]["class_path"].endswith("AnomalyGPT")
    assert config["model"]["init_args"]["few_shot"]["k_shot"] == expected["model"]["init_args"]["few_shot"]["k_shot"]
    assert config["data"]["class_path"].endswith("MVTecAD")


def test_config_names_resolve_only_where_no_file_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    few_shot = str(packaged_config("mvtec_few_shot"))
    assert resolve_config_flags(["fit", "--config", "mvtec_few_shot"]) == ["fit", "--config", few_shot]
    assert resolve_config_flags(["fit", "--config=configs/mvtec_few_shot.yaml"])[1] in {
        "--config=configs/mvtec_few_shot.yaml",  # run from the checkout: the file exists and wins
        f"--config={few_shot}",
    }
    assert resolve_config_flags(["leaderboard", "-c", "leaderboard/mvtec"])[2] == str(
        packaged_configs()["leaderboard/mvtec"]
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mvtec_few_shot").write_text("model: {}\n")
    assert resolve_config_flags(["fit", "--config", "mvtec_few_shot"]) == ["fit", "--config", "mvtec_few_shot"]
    assert resolve_config_flags(["fit", "--config", "not_a_config"]) == ["fit", "--config", "not_a_config"]
