"""The package's layout: every module says what it is for, and 0.1's import paths keep working."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import anomalib_agpt
from anomalib_agpt._moved import MOVED

PACKAGE = Path(anomalib_agpt.__file__).parent
# Every module of 0.1 (flat layout) that users or pickled exports may name.
MODULES_OF_0_1 = (
    "anomaly_maps",
    "chat",
    "checkpoints",
    "cli",
    "conversation",
    "demo",
    "encoder",
    "leaderboard",
    "lightning_model",
    "llm_head",
    "llm_loading",
    "loss",
    "metrics",
    "pre_processing",
    "presets",
    "prompt_learner",
    "prompting",
    "references",
    "synthesis",
    "torch_model",
    "serve",
    "serve.app",
    "serve.handlers",
    "serve.models",
)


def test_every_module_starts_with_a_one_line_purpose() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, path
        assert docstring.splitlines()[0].rstrip().endswith((".", ":")), path


@pytest.mark.parametrize("name", MODULES_OF_0_1)
def test_module_paths_of_0_1_give_the_moved_modules(name: str) -> None:
    old = importlib.import_module(f"anomalib_agpt.{name}")
    assert old.__name__ != f"anomalib_agpt.{name}"  # it lives elsewhere now
    assert old is importlib.import_module(old.__name__)
    assert old.__spec__.name == old.__name__  # its own spec, not the alias's


def test_user_facing_names_import_from_their_documented_paths() -> None:
    from anomalib_agpt.chat import AnomalyGPTChat
    from anomalib_agpt.leaderboard import run_leaderboard
    from anomalib_agpt.metrics import AnswerAccuracy
    from anomalib_agpt.prompting import resolve_original_class_name
    from anomalib_agpt.synthesis import SyntheticPairs, synthesize

    from anomalib_agpt.apps.leaderboard import run_leaderboard as moved_run
    from anomalib_agpt.callbacks import ExplanationVisualizer, PredictionWriter

    assert run_leaderboard is moved_run
    assert all(
        callable(each)
        for each in (ExplanationVisualizer, PredictionWriter, AnomalyGPTChat, AnswerAccuracy, SyntheticPairs)
    )
    assert callable(synthesize)
    assert resolve_original_class_name("a photo of a cable") == "cable"


def test_moved_table_covers_exactly_what_moved() -> None:
    targets = {MOVED[f"anomalib_agpt.{name}"] for name in MODULES_OF_0_1 if f"anomalib_agpt.{name}" in MOVED}
    assert len(targets) == len(MOVED)
    for target in MOVED.values():
        assert importlib.util.find_spec(target) is not None, target


def test_importing_the_package_loads_no_application() -> None:
    code = (
        "import sys, anomalib_agpt; "
        "print(sorted(m for m in sys.modules if m.startswith(('gradio', 'anomalib_agpt.apps'))))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
