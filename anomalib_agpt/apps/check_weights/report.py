"""What check-weights says about one path (:class:`WeightReport`) and about a fit between pieces (:class:`Check`).

The readers fill a report per path; the checks across files and the printed summary only read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGEBIND = "ImageBind weights"
ANOMALYGPT = "AnomalyGPT delta"
PANDAGPT = "PandaGPT delta"
LLM = "LLM"
LIGHTNING = "Lightning checkpoint"

_RELEASED_PANDAGPT = "pandagpt_7b_max_len_1024"
_GENERIC_NAMES = {"pytorch_model.pt", "pytorch_model.bin", "model.ckpt", "last.ckpt"}


@dataclass
class WeightReport:
    """What one path is: its kind and sizes, or why it is not a file this product reads."""

    given: str
    """The path as the user wrote it."""
    path: Path | None = None
    """Where it was found (a folder holding ``pytorch_model.pt`` becomes that file)."""
    kind: str | None = None
    """``IMAGEBIND``, ``ANOMALYGPT``, ``PANDAGPT``, ``LLM``, ``LIGHTNING``, or ``None`` when not recognised."""
    sizes: dict[str, Any] = field(default_factory=dict)
    """Numbers read from the file (widths, layers, ranks, vocabulary), by name."""
    details: list[str] = field(default_factory=list)
    """Human-readable lines."""
    error: str | None = None
    """Why the path is missing or not a file this product reads."""

    @property
    def label(self) -> str:
        """A short name: the file or folder name, with its folder for the released files' generic names."""
        path = Path(self.given)
        if path.name in _GENERIC_NAMES and path.parent.name:
            return f"{path.parent.name}/{path.name}"
        return path.name or self.given


@dataclass(frozen=True)
class Check:
    """One fit between pieces (or within one): whether it holds, in words, and which reports it concerns."""

    ok: bool
    text: str
    parts: frozenset[int] = frozenset()
    """Indices of the reports it concerns; a mode is ready when one file per kind passes all their checks."""
