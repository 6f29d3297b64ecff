"""``anomalib-agpt leaderboard --llm ... --pandagpt-checkpoint ...``: every AnomalyGPT cell explains.

The end-to-end test runs the leaderboard through the CLI entry point on the fixture weights (tiny
ImageBind, AnomalyGPT and PandaGPT deltas, tiny Vicuna) and checks ``results.csv``'s answer accuracy
and grounding against values recomputed from the answers each cell gave (recorded by a spy on the
test-batch timer). The cheaper tests check where the PandaGPT delta comes from: flag, YAML, environment.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from anomalib_agpt import leaderboard
from anomalib_agpt.apps.cli import main as cli_main
from anomalib_agpt.explanation.metrics import is_grounded

from .conftest import ANOMALYGPT_DELTA, FIXTURES, IMAGEBIND, PANDAGPT_DELTA

ANOMALYGPT_MODELS = ["AnomalyGPT-0shot", "AnomalyGPT-1shot", "AnomalyGPT-fullshot"]
VICUNA = FIXTURES / "vicuna"
CONFIG = """\
synthetic: {num_train: 2, num_test_good: 1, num_test_defect: 1, image_size: 64}
categories: [tablet]
seeds: [0]
epochs: 1
eval_batch_size: 2
"""
LABELS = [0, 1, 1]  # 1 good test image + 1 per defect type (two types): batches of 2 and 1
Answer = tuple[str, int, torch.Tensor]
Recorded = tuple[dict[str, list[Answer]], dict[str, str | None]]


def _weight_flags() -> list[str]:
    """The fixture's weights and head counts, as leaderboard flags."""
    return [
        "--imagebind-checkpoint",
        str(IMAGEBIND),
        "--anomalygpt-checkpoint",
        str(ANOMALYGPT_DELTA),
        "--vision-heads",
        "4",
        "--text-heads",
        "2",
    ]


def _spy_timer(output: Path, recorded: Recorded) -> Callable[[], Any]:
    """A ``batch_timer`` that also records each test image's answer, label, mask and the head's PandaGPT delta."""
    original = leaderboard.batch_timer

    def factory() -> Any:
        timer_class = type(original())

        class Spy(timer_class):  # type: ignore[misc, valid-type]
            def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
                super().on_test_batch_end(trainer, pl_module, outputs, batch, *args)
                model = Path(trainer.default_root_dir).relative_to(output / "runs").parts[0]
                answers, deltas = recorded
                deltas[model] = pl_module.model.llm_spec.pandagpt_checkpoint
                for index, answer in enumerate(batch.explanation):
                    label = int(batch.gt_label[index])
                    answers.setdefault(model, []).append((answer, label, batch.gt_mask[index].detach().cpu()))

        return Spy()

    return factory


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], Recorded]:
    """One leaderboard run through the CLI with an LLM and the PandaGPT delta: results rows and what was recorded."""
    output = tmp_path_factory.mktemp("leaderboard_explain")
    config = output / "leaderboard.yaml"
    config.write_text(CONFIG)
    recorded: Recorded = ({}, {})
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(leaderboard.PANDAGPT_ENV, raising=False)
        patch.setattr(leaderboard.cells, "batch_timer", _spy_timer(output, recorded))
        cli_main(
            [
                "leaderboard",
                "--config",
                str(config),
                "--output",
                str(output),
                "--models",
                *ANOMALYGPT_MODELS,
                *_weight_flags(),
                "--llm",
                str(VICUNA),
                "--pandagpt-checkpoint",
                str(PANDAGPT_DELTA),
            ],
        )
    with (output / "results.csv").open(newline="") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    return rows, recorded


def test_every_anomalygpt_cell_explains(explained: tuple[dict[str, dict[str, str]], Recorded]) -> None:
    """Zero-, few- and full-shot cells are ``ok``, explain with the flag's delta and answered every test image."""
    rows, (answers, deltas) = explained
    assert list(rows) == ANOMALYGPT_MODELS
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert "explains with vicuna" in row["notes"]
        assert deltas[name] == str(PANDAGPT_DELTA)
        assert sorted(label for _, label, _ in answers[name]) == LABELS
        assert all(isinstance(answer, str) and answer for answer, _, _ in answers[name])
    assert "trained: decoder" in rows["AnomalyGPT-fullshot"]["notes"]


def test_answer_columns_equal_recomputed_values(
    explained: tuple[dict[str, dict[str, str]], Recorded],
) -> None:
    """``AnswerAccuracy`` and ``ExplanationGrounding`` in results.csv are the cells' answers scored by hand."""
    rows, (answers, _) = explained
    for name, row in rows.items():
        given = answers[name]
        accuracy = sum(("Yes" in answer) == bool(label) for answer, label, _ in given) / len(given)
        grounding = sum(is_grounded(answer, label, mask) for answer, label, mask in given) / len(given)
        assert float(row["AnswerAccuracy"]) == pytest.approx(accuracy, abs=1e-5), name
        assert float(row["ExplanationGrounding"]) == pytest.approx(grounding, abs=1e-5), name


def test_pandagpt_checkpoint_from_flag_yaml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flag over YAML key over ``$ANOMALIB_AGPT_PANDAGPT``; unset everywhere: ``None``."""
    monkeypatch.delenv(leaderboard.PANDAGPT_ENV, raising=False)
    assert leaderboard.parse_args([]).pandagpt_checkpoint is None
    monkeypatch.setenv(leaderboard.PANDAGPT_ENV, "from_env.pt")
    assert leaderboard.parse_args([]).pandagpt_checkpoint == "from_env.pt"
    config = tmp_path / "leaderboard.yaml"
    for key in ("pandagpt_checkpoint", "pandagpt-checkpoint"):
        config.write_text(f"{key}: from_yaml.pt\n")
        assert leaderboard.parse_args(["--config", str(config)]).pandagpt_checkpoint == "from_yaml.pt"
    flagged = leaderboard.parse_args(["--config", str(config), "--pandagpt-checkpoint", "from_flag.pt"])
    assert flagged.pandagpt_checkpoint == "from_flag.pt"


def test_pandagpt_checkpoint_reaches_every_anomalygpt_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment's delta reaches the head spec of 0-, k- and full-shot; ``model_options`` still win."""
    monkeypatch.setenv(leaderboard.PANDAGPT_ENV, str(PANDAGPT_DELTA))
    config = leaderboard.parse_args([*_weight_flags(), "--llm", str(VICUNA), "--models", *ANOMALYGPT_MODELS])
    for name in ANOMALYGPT_MODELS:
        spec = leaderboard.build_model(name, config, "tablet", 0).model.model.llm_spec
        assert spec.llm == str(VICUNA)
        assert spec.pandagpt_checkpoint == str(PANDAGPT_DELTA)
    config.model_options = {"AnomalyGPT-1shot": {"weights": {"pandagpt_checkpoint": "other.pt"}}}
    assert leaderboard.build_model(
        "AnomalyGPT-1shot", config, "tablet", 0
    ).model.model.llm_spec.pandagpt_checkpoint == ("other.pt")
    config.llm = None  # no LLM: scores only, the delta is not passed
    assert leaderboard.build_model("AnomalyGPT-0shot", config, "tablet", 0).model.model.llm_spec is None
