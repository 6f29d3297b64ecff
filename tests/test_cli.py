"""The stock ``anomalib`` CLI with the dotted model path, ``anomalib-agpt`` with the short name, the demo."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomalib_agpt.data import make_synthetic_mvtec

CATEGORY = "weave"
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def script(name: str) -> str:
    """A console script of this environment (next to its python)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name) or name


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, cwd=cwd, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def model_args(weights: dict[str, Any], k_shot: int) -> list[str]:
    return [
        f"--model.imagebind_checkpoint={weights['imagebind_checkpoint']}",
        f"--model.anomalygpt_checkpoint={weights['anomalygpt_checkpoint']}",
        f"--model.vision_heads={weights['vision_heads']}",
        f"--model.text_heads={weights['text_heads']}",
        f"--model.k_shot={k_shot}",
    ]


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory: pytest.TempPathFactory, weights: dict[str, Any]) -> dict[str, Path]:
    """``anomalib fit --model anomalib_agpt.AnomalyGPT`` (the stock CLI, dotted path), few-shot."""
    work = tmp_path_factory.mktemp("cli")
    root = make_synthetic_mvtec(
        work / "data", categories=(CATEGORY,), num_train=3, num_test_good=2, num_test_defect=1, image_size=64
    )
    data = ["--data", "MVTecAD", f"--data.root={root}", f"--data.category={CATEGORY}", "--data.num_workers=0"]
    run(
        script("anomalib"),
        "fit",
        "--model",
        "anomalib_agpt.AnomalyGPT",
        *model_args(weights, 1),
        *data,
        "--default_root_dir",
        work / "results",
        "--trainer.logger",
        "false",
        cwd=work,
    )
    version = work / "results" / "AnomalyGPT" / "MVTecAD" / CATEGORY / "v0"
    return {"work": work, "root": root, "version": version, "ckpt": version / "weights" / "lightning" / "model.ckpt"}


def test_stock_cli_fit_writes_checkpoint_and_config(cli_fit: dict[str, Path]) -> None:
    assert cli_fit["ckpt"].is_file()
    assert cli_fit["ckpt"].stat().st_size < 1_000_000  # no frozen weights
    config = yaml.safe_load((cli_fit["version"] / "config.yaml").read_text())
    assert config["model"]["class_path"] == "anomalib_agpt.AnomalyGPT"
    assert config["model"]["init_args"]["k_shot"] == 1


def test_short_name_test_reports_metrics(cli_fit: dict[str, Path], weights: dict[str, Any]) -> None:
    result = run(
        script("anomalib-agpt"),
        "test",
        "--model",
        "AnomalyGPT",
        *model_args(weights, 1),
        "--data",
        "MVTecAD",
        f"--data.root={cli_fit['root']}",
        f"--data.category={CATEGORY}",
        "--data.num_workers=0",
        "--ckpt_path",
        cli_fit["ckpt"],
        "--default_root_dir",
        cli_fit["work"] / "test",
        "--trainer.logger",
        "false",
        cwd=cli_fit["work"],
    )
    for metric in ("image_AUROC", "pixel_AUROC", "image_F1Score"):
        assert metric in result.stdout


def test_short_name_predict_folder_and_export(cli_fit: dict[str, Path], weights: dict[str, Any]) -> None:
    images = cli_fit["root"] / CATEGORY / "test" / "good"
    run(
        script("anomalib-agpt"),
        "predict",
        "--model",
        "AnomalyGPT",
        *model_args(weights, 1),
        "--data",
        images,
        "--ckpt_path",
        cli_fit["ckpt"],
        "--default_root_dir",
        cli_fit["work"] / "predict",
        cwd=cli_fit["work"],
    )
    written = list((cli_fit["work"] / "predict").rglob("*.png"))
    assert len(written) == len(list(images.glob("*.png")))
    run(
        script("anomalib-agpt"),
        "export",
        "--model",
        "AnomalyGPT",
        *model_args(weights, 1),
        "--export_type",
        "openvino",
        "--input_size",
        "[64, 64]",
        "--ckpt_path",
        cli_fit["ckpt"],
        "--default_root_dir",
        cli_fit["work"] / "export",
        cwd=cli_fit["work"],
    )
    assert list((cli_fit["work"] / "export").rglob("model.xml"))


def test_demo_quick_mode_trains_explains_and_compares(tmp_path: Path) -> None:
    """The demo in its reduced mode: a leaderboard of trained AnomalyGPT (with answers), k-shot and Patchcore."""
    result = run(script("anomalib-agpt"), "demo", "--output", tmp_path / "demo", "--quick", cwd=tmp_path)
    assert "image AUROC" in result.stdout
    assert "No AnomalyGPT weights configured" in result.stdout
    with (tmp_path / "demo" / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["model"] for row in rows] == ["AnomalyGPT-fullshot", "AnomalyGPT-4shot", "Patchcore"]
    assert [row["status"] for row in rows] == ["ok"] * 3
    assert "trained: decoder, prompt_learner, llama_proj, lora" in rows[0]["notes"]
    assert "random backbone" in rows[2]["notes"]
    for row in rows:
        assert 0.0 <= float(row["image_AUROC"]) <= 1.0
        assert 0.0 <= float(row["pixel_AUROC"]) <= 1.0
        assert float(row["ms_per_image"]) > 0
    assert 0.0 <= float(rows[0]["AnswerAccuracy"]) <= 1.0
    assert 0.0 <= float(rows[0]["ExplanationGrounding"]) <= 1.0
    assert rows[1]["AnswerAccuracy"] == ""  # scores-only models have no answers
    assert float(rows[1]["pixel_AUROC"]) > 0.8  # the k-shot memory localises the drawn defects
    assert (tmp_path / "demo" / "leaderboard.md").is_file()
    assert (tmp_path / "demo" / "leaderboard.png").is_file()
    pngs = list((tmp_path / "demo" / "runs" / "AnomalyGPT-fullshot").rglob("images/**/*.png"))
    assert pngs  # the explanation visualizer's panels


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_name_real_arguments(config: Path) -> None:
    """Every shipped config names existing classes and only their constructor arguments."""
    import importlib
    import inspect

    content = yaml.safe_load(config.read_text())
    for section in ("model", "data"):
        module, _, name = content[section]["class_path"].rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        assert set(content[section]["init_args"]) <= set(parameters), config.name
    assert content["model"]["class_path"] == "anomalib_agpt.AnomalyGPT"
    for callback in content.get("trainer", {}).get("callbacks", []):
        module, _, name = callback["class_path"].rpartition(".")
        assert getattr(importlib.import_module(module), name)


def test_explain_predict_writes_jsonl_from_the_cli(cli_fit: dict[str, Path], weights: dict[str, Any]) -> None:
    """``--trainer.callbacks PredictionWriter`` with explain on: one JSON line per image, with its answer."""
    from .conftest import FIXTURES, PANDAGPT_DELTA

    images = cli_fit["root"] / CATEGORY / "test" / "good"
    out = cli_fit["work"] / "explained"
    run(
        script("anomalib-agpt"),
        "predict",
        "--model",
        "AnomalyGPT",
        *model_args(weights, 1),
        "--model.explain=true",
        f"--model.llm={FIXTURES / 'vicuna'}",
        f"--model.pandagpt_checkpoint={PANDAGPT_DELTA}",
        "--model.max_new_tokens=8",
        "--data",
        images,
        "--ckpt_path",
        cli_fit["ckpt"],
        "--default_root_dir",
        out,
        "--trainer.callbacks",
        "anomalib_agpt.callbacks.PredictionWriter",
        f"--trainer.callbacks.output_dir={out / 'predictions'}",
        cwd=cli_fit["work"],
    )
    lines = (out / "predictions" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(list(images.glob("*.png")))
    for record in map(json.loads, lines):
        assert isinstance(record["explanation"], str)
        assert record["pred_label"] == ("Yes" in record["explanation"])
        assert 0.0 <= record["pred_score"] <= 1.0
