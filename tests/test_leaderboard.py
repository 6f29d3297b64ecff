"""``anomalib-agpt leaderboard`` end to end on tiny synthetic data: outputs, skip/fail rows, resume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from anomalib_agpt import leaderboard
from anomalib_agpt.explanation.metrics import AnswerAccuracy
from tests.conftest import ANOMALYGPT_DELTA, FIXTURES, IMAGEBIND, PANDAGPT_DELTA, auroc_by_ranks

MODELS = ["AnomalyGPT-0shot", "AnomalyGPT-1shot", "AnomalyGPT-fullshot", "Patchcore", "EfficientAd", "NoSuchModel"]
CONFIG = """\
synthetic: {num_train: 4, num_test_good: 2, num_test_defect: 1, image_size: 64}
categories: [weave]
seeds: [0]
epochs: 1
model_options:
  Patchcore: {coreset_sampling_ratio: 0.02}
"""


def _rows(output: Path) -> list[dict[str, str]]:
    with (output / "results.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One leaderboard run (YAML config + flags), shared by the tests below."""
    output = tmp_path_factory.mktemp("leaderboard")
    config = output / "leaderboard.yaml"
    config.write_text(CONFIG)
    argv = ["--config", str(config), "--output", str(output), "--models", *MODELS]
    leaderboard.main(argv)
    return output, argv


def test_outputs_exist_and_parse(run: tuple[Path, list[str]]) -> None:
    output, _ = run
    rows = {row["model"]: row for row in _rows(output)}
    assert list(rows) == MODELS
    for name in ["AnomalyGPT-0shot", "AnomalyGPT-1shot", "AnomalyGPT-fullshot", "Patchcore"]:
        row = rows[name]
        assert row["status"] == "ok", row
        for metric in ["image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score", "pixel_AUPRO"]:
            assert 0.0 <= float(row[metric]) <= 1.0, (name, metric)
        assert float(row["ms_per_image"]) > 0
        assert float(row["peak_rss_mb"]) >= 0
    assert "random weights" in rows["AnomalyGPT-0shot"]["notes"]
    assert (output / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_cell_writes_its_raw_image_scores(run: tuple[Path, list[str]]) -> None:
    """``image_scores.csv`` holds every test image's raw score; its AUROC is the row's image AUROC."""
    output, _ = run
    test_images = sorted(str(path) for path in (output / "data" / "weave" / "test").rglob("*.png"))
    for row in _rows(output):
        if row["status"] != "ok":
            continue
        path = output / "runs" / row["model"] / "weave" / "seed0" / "image_scores.csv"
        with path.open(newline="") as file:
            scores = list(csv.DictReader(file))
        assert sorted(str(Path(line["image_path"]).resolve()) for line in scores) == [
            str(Path(image).resolve()) for image in test_images
        ]
        assert {int(line["label"]) for line in scores} == {0, 1}
        values = torch.tensor([float(line["score"]) for line in scores], dtype=torch.float64)
        labels = torch.tensor([int(line["label"]) for line in scores])
        assert {line["label"] for line in scores if "/good/" in line["image_path"]} == {"0"}
        assert float(row["image_AUROC"]) == pytest.approx(auroc_by_ranks(values, labels), abs=1e-6), row["model"]


def test_offline_rules_and_failures(run: tuple[Path, list[str]]) -> None:
    output, _ = run
    rows = {row["model"]: row for row in _rows(output)}
    assert "random backbone" in rows["Patchcore"]["notes"]
    assert rows["EfficientAd"]["status"].startswith("skipped: ")
    assert "download" in rows["EfficientAd"]["status"]
    assert rows["NoSuchModel"]["status"].startswith("failed: ")
    assert "NoSuchModel" in rows["NoSuchModel"]["status"]
    assert (output / "errors" / "NoSuchModel_weave_seed0.txt").is_file()


def test_markdown_has_mean_rows(run: tuple[Path, list[str]]) -> None:
    output, _ = run
    text = (output / "leaderboard.md").read_text()
    mean_rows = [line for line in text.splitlines() if "| **mean** |" in line]
    assert {line.split(" | ")[0].lstrip("| ") for line in mean_rows} == {
        "AnomalyGPT-0shot",
        "AnomalyGPT-1shot",
        "AnomalyGPT-fullshot",
        "Patchcore",
    }
    assert "random backbone" in text
    assert "random weights" in text
    assert "skipped: " in text
    assert "failed: " in text


def test_rerun_skips_finished_cells(
    run: tuple[Path, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rerun says what it found, runs only the failed cell and ends with where the outputs are."""
    output, argv = run
    before = _rows(output)
    built: list[str] = []
    original = leaderboard.build_model

    def counting(name: str, *args: Any, **kwargs: Any) -> leaderboard.BuiltModel:
        built.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(leaderboard.cells, "build_model", counting)  # where a cell builds its model
    leaderboard.main(argv)
    assert built == ["NoSuchModel"]  # only the failed cell is retried
    after = _rows(output)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 1
    assert after[-1]["status"].startswith("failed: ")
    printed = capsys.readouterr().out.splitlines()
    results = output / "results.csv"
    assert printed[0] == (
        f"Resuming from {results}: 5 of 6 cells already done, 1 to run (1 failed earlier and will be retried)."
    )
    assert printed[-6] == f"Outputs in {output.resolve()}:"
    for line, name in zip(
        printed[-5:], ["results.csv", "leaderboard.md", "leaderboard.png", "runs", "errors"], strict=True
    ):
        assert line.endswith(f" {output.resolve() / name}"), line


def test_config_and_flags() -> None:
    config = leaderboard.parse_args(["--models", "Padim", "--seeds", "1", "2"])
    assert config.models == ["Padim"]
    assert config.seeds == [1, 2]
    assert config.dataset == "synthetic"
    assert len(config.categories) >= 1
    with pytest.raises(SystemExit):
        leaderboard.parse_args(["--dataset", "mvtec"])  # needs --root


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs" / "leaderboard").glob("*.yaml")))
def test_shipped_leaderboard_configs_parse(config: Path) -> None:
    """Every leaderboard config names only known options and models."""
    parsed = leaderboard.parse_args(["--config", str(config)])
    assert parsed.models
    assert all(name.startswith("AnomalyGPT-") or name in leaderboard.DEFAULT_MODELS for name in parsed.models)


def test_pretrained_backbone_only_when_it_can_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretrained backbones stay when downloads are allowed or timm's weights are cached; else random."""
    import inspect

    import huggingface_hub
    from anomalib.models import Padim

    backbone = inspect.signature(Padim.__init__).parameters["backbone"]
    asked: list[tuple[str, str]] = []
    cached = {("timm/resnet18.a1_in1k", "model.safetensors")}

    def cache_lookup(repo: str, file: str) -> str | None:
        asked.append((repo, file))
        return "/cache/model.safetensors" if (repo, file) in cached else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache_lookup)
    monkeypatch.setattr(leaderboard.models, "_online", lambda: True)
    assert leaderboard.models._pretrained_backbone_available(backbone)
    assert not asked  # online: nothing to look up
    monkeypatch.setattr(leaderboard.models, "_online", lambda: False)
    assert leaderboard.models._pretrained_backbone_available(backbone)
    assert asked[0] == ("timm/resnet18.a1_in1k", "model.safetensors")
    cached.clear()
    assert not leaderboard.models._pretrained_backbone_available(backbone)
    assert leaderboard.build_model("Padim", leaderboard.LeaderboardConfig(), "weave", 0).notes.startswith(
        "random backbone"
    )


def test_anomalygpt_notes_say_what_trains_and_explains(tmp_path: Path) -> None:
    """A cell's notes name the random preset, the trained parts and the explaining LLM."""
    from anomalib_agpt.model.presets import write_tiny_llm

    llm = write_tiny_llm(tmp_path / "tiny_llm", 0)
    options = {
        "weights": {"llm": str(llm)},
        "explanation": {"explain": True},
        "training": {"trainable": ["decoder", "prompt_learner", "llama_proj", "lora"]},
    }
    config = leaderboard.LeaderboardConfig(output=tmp_path, model_options={"AnomalyGPT-fullshot": options})
    built = leaderboard.build_model("AnomalyGPT-fullshot", config, "weave", 0)
    trained = "trained: decoder, prompt_learner, llama_proj, lora"
    assert built.notes == f"random weights (random-small preset); {trained}; explains with tiny_llm"
    assert built.trainer_options["max_epochs"] == config.epochs


def test_download_only_models_skip_offline_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """WinClip and Dinomaly need downloads: with HF_HUB_OFFLINE set they are skipped, and the reason says so."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, needs in (("WinClip", "OpenCLIP"), ("Dinomaly", "DINOv2")):
        built = leaderboard.build_model(name, leaderboard.LeaderboardConfig(), "weave", 0)
        assert built.model is None
        assert needs in built.skip_reason
        assert built.skip_reason.endswith("HF_HUB_OFFLINE is set")


def test_protocol_paper_reaches_anomalygpt_cells_and_their_accuracy_count(heads: dict[str, int]) -> None:
    """``--protocol paper``: AnomalyGPT cells are built with it, count accuracy the paper's way, and say so."""
    config = leaderboard.parse_args(["--protocol", "paper", "--models", "AnomalyGPT-1shot"])
    assert config.protocol == "paper"
    built = leaderboard.build_model("AnomalyGPT-1shot", config, "weave", 0)
    assert built.model.protocol == "paper"
    assert built.notes.endswith("paper protocol")
    default = leaderboard.build_model("AnomalyGPT-1shot", leaderboard.LeaderboardConfig(), "weave", 0)
    assert default.model.protocol == "anomalib"
    assert "paper" not in default.notes
    # with an LLM the cells explain, and their evaluator counts answers by the protocol's rule
    llm = ["--llm", str(FIXTURES / "vicuna"), "--pandagpt-checkpoint", str(PANDAGPT_DELTA)]
    llm += ["--imagebind-checkpoint", str(IMAGEBIND), "--anomalygpt-checkpoint", str(ANOMALYGPT_DELTA)]
    llm += ["--vision-heads", str(heads["vision_heads"]), "--text-heads", str(heads["text_heads"])]
    for protocol, rule in [("paper", "paper"), ("anomalib", "anomalib")]:
        config = leaderboard.parse_args(["--protocol", protocol, "--models", "AnomalyGPT-1shot", *llm])
        model = leaderboard.build_model("AnomalyGPT-1shot", config, "weave", 0).model
        assert [m.rule for m in model.evaluator.test_metrics if isinstance(m, AnswerAccuracy)] == [rule]


def test_means_over_seeds_then_categories_by_hand() -> None:
    """Per category: the mean over its ok seeds (a rerun's row replacing the first); per model: the mean over
    the categories with an ok seed, the failed ones named in the status."""
    config = leaderboard.LeaderboardConfig(models=["M"], categories=["a", "b", "c"], seeds=[0, 1])

    def row(category: str, seed: int, status: str = "ok", **metrics: float) -> dict[str, str]:
        return {"model": "M", "category": category, "seed": str(seed), "status": status, "notes": "n"} | {
            key: str(value) for key, value in metrics.items()
        }

    rows = [
        row("a", 0, image_AUROC=0.1, pixel_AUROC=0.5),  # replaced by the rerun below
        row("a", 0, image_AUROC=0.6, pixel_AUROC=0.9),
        row("a", 1, image_AUROC=0.8, pixel_AUROC=0.7),
        row("b", 0, image_AUROC=0.9, pixel_AUROC=0.95),
        row("b", 1, status="failed: out of memory"),
        row("c", 0, status="failed: boom"),
        row("c", 1, status="failed: boom"),
    ]
    summary = {entry["category"]: entry for entry in leaderboard.summarise(rows, config)}
    assert summary["a"]["image_AUROC"] == pytest.approx(0.7)
    assert summary["a"]["pixel_AUROC"] == pytest.approx(0.8)
    assert summary["b"]["image_AUROC"] == pytest.approx(0.9)
    assert summary["b"]["status"] == "ok (1/2 seeds)"
    assert summary["c"]["image_AUROC"] is None
    assert summary["**mean**"]["image_AUROC"] == pytest.approx((0.7 + 0.9) / 2)
    assert summary["**mean**"]["pixel_AUROC"] == pytest.approx((0.8 + 0.95) / 2)
    assert summary["**mean**"]["status"] == "ok (2/3 categories)"
