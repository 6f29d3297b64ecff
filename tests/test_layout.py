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
# Module paths of 0.2 that moved in 0.3 (the face on top, weight files at the bottom).
MODULES_OF_0_2 = ("model.lightning_model", "model.checkpoints", "explanation.chat")
# The floors of the house, ground first: a module imports only from its own floor or below.
FLOORS = ("errors", "weights", "data", "explanation", "callbacks", "model", "training", "module", "apps")


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


@pytest.mark.parametrize("name", MODULES_OF_0_2)
def test_module_paths_of_0_2_give_the_moved_modules(name: str) -> None:
    old = importlib.import_module(f"anomalib_agpt.{name}")
    assert old.__name__ != f"anomalib_agpt.{name}"
    assert old is importlib.import_module(old.__name__)


def test_moved_table_covers_exactly_what_moved() -> None:
    old_paths = {f"anomalib_agpt.{name}" for name in (*MODULES_OF_0_1, *MODULES_OF_0_2)}
    assert set(MOVED) <= old_paths
    for target in MOVED.values():
        assert importlib.util.find_spec(target) is not None, target


def _imported_packages(path: Path) -> set[str]:
    """The ``anomalib_agpt`` floors a module imports (top-level and lazy imports alike)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "anomalib_agpt" and len(parts) > 1 and parts[1] in FLOORS:
                found.add(parts[1])
    return found


def test_every_import_runs_down_the_floors() -> None:
    """The face on top, then training, the tensor path, callbacks, the explanation head, data, weight files."""
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        floor = relative.parts[0].removesuffix(".py")
        if floor not in FLOORS:
            continue  # the package's face and _moved.py hand names on
        upward += [
            f"{relative} imports anomalib_agpt.{other}"
            for other in _imported_packages(path)
            if FLOORS.index(other) > FLOORS.index(floor)
        ]
    assert upward == []


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert long == {}


def test_importing_the_package_loads_no_application_and_serve_no_gradio() -> None:
    """One fresh process: the package alone imports no command; the web demo's modules import no Gradio."""
    code = (
        "import sys, anomalib_agpt; "
        "print(sorted(m for m in sys.modules if m.startswith(('gradio', 'anomalib_agpt.apps')))); "
        "import anomalib_agpt.apps.serve, anomalib_agpt.apps.serve.app, anomalib_agpt.apps.cli; "
        "print('gradio' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["[]", "False"]
