"""Module paths of earlier versions resolved to their homes now, so user imports and pickled exports keep working.

0.1 kept every module at the top level; 0.2 groups them by what they are for (``model``,
``explanation``, ``training``, ``apps``). A finder on ``sys.meta_path`` answers an old dotted path
with the module at its new path, imported only when asked for (the web demo's Gradio and the
leaderboard stay unimported until used).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED = {
    "anomalib_agpt.lightning_model": "anomalib_agpt.module.lightning_model",
    "anomalib_agpt.torch_model": "anomalib_agpt.model.torch_model",
    "anomalib_agpt.encoder": "anomalib_agpt.model.encoder",
    "anomalib_agpt.checkpoints": "anomalib_agpt.weights.checkpoints",
    "anomalib_agpt.model.checkpoints": "anomalib_agpt.weights.checkpoints",
    "anomalib_agpt.anomaly_maps": "anomalib_agpt.model.anomaly_maps",
    "anomalib_agpt.prompting": "anomalib_agpt.model.prompting",
    "anomalib_agpt.references": "anomalib_agpt.model.references",
    "anomalib_agpt.pre_processing": "anomalib_agpt.model.pre_processing",
    "anomalib_agpt.presets": "anomalib_agpt.model.presets",
    "anomalib_agpt.llm_head": "anomalib_agpt.explanation.llm_head",
    "anomalib_agpt.llm_loading": "anomalib_agpt.explanation.llm_loading",
    "anomalib_agpt.prompt_learner": "anomalib_agpt.explanation.prompt_learner",
    "anomalib_agpt.conversation": "anomalib_agpt.explanation.conversation",
    "anomalib_agpt.chat": "anomalib_agpt.module.chat",
    "anomalib_agpt.metrics": "anomalib_agpt.explanation.metrics",
    "anomalib_agpt.synthesis": "anomalib_agpt.training.synthesis",
    "anomalib_agpt.loss": "anomalib_agpt.training.loss",
    "anomalib_agpt.cli": "anomalib_agpt.apps.cli",
    # moved in 0.3 (the anomalib face above the parts it composes; weight files at the bottom)
    "anomalib_agpt.model.lightning_model": "anomalib_agpt.module.lightning_model",
    "anomalib_agpt.explanation.chat": "anomalib_agpt.module.chat",
    "anomalib_agpt.demo": "anomalib_agpt.apps.demo",
    "anomalib_agpt.leaderboard": "anomalib_agpt.apps.leaderboard",
    "anomalib_agpt.serve": "anomalib_agpt.apps.serve",  # and its submodules
}


def new_path(old: str) -> str | None:
    """The current dotted path of a 0.1 module path (or of a module inside a moved package)."""
    for before, after in MOVED.items():
        if old == before or old.startswith(before + "."):
            return after + old[len(before) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already-imported module at the new path."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The module at its new path (imported now if it was not)."""
        del spec
        module = importlib.import_module(self.target)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run; give back the module's own spec, which the import system replaced with the alias's."""
        module.__spec__ = self.own_spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds 0.1 module paths and loads them as their new modules."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old path, else ``None`` (the normal finders continue)."""
        del path, target
        moved = new_path(fullname)
        if moved is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(moved))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
