"""Shared fixtures: the reference set (copied into the repo) and a tiny model built from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures" / "anomalygpt_reference"
IMAGEBIND = FIXTURES / "imagebind.pth"
ANOMALYGPT_DELTA = FIXTURES / "anomalygpt_delta.pt"
PANDAGPT_DELTA = FIXTURES / "pandagpt_delta.pt"


@pytest.fixture(scope="session")
def meta() -> dict[str, Any]:
    """The reference set's settings, sizes and tolerances."""
    return json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="session")
def expected() -> dict[str, Any]:
    """The outputs the original implementation produced from the reference set."""
    return torch.load(FIXTURES / "expected.pt", weights_only=True)


@pytest.fixture(scope="session")
def heads(meta: dict[str, Any]) -> dict[str, int]:
    """Head counts of the reference set (weights cannot reveal them)."""
    dims = meta["imagebind"]["dims"]
    return {"vision_heads": dims["vision_num_heads"], "text_heads": dims["text_num_heads"]}


@pytest.fixture(scope="session")
def weights(heads: dict[str, int]) -> dict[str, Any]:
    """Constructor arguments that load the reference set's weights."""
    return {"imagebind_checkpoint": str(IMAGEBIND), "anomalygpt_checkpoint": str(ANOMALYGPT_DELTA), **heads}
