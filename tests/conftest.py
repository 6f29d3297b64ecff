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
if os.environ.get("PYTEST_XDIST_WORKER"):  # scripts/test.sh runs one worker per core: one thread each
    torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures" / "anomalygpt_reference"
IMAGEBIND = FIXTURES / "imagebind.pth"
ANOMALYGPT_DELTA = FIXTURES / "anomalygpt_delta.pt"
PANDAGPT_DELTA = FIXTURES / "pandagpt_delta.pt"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, with the reason, where PyTorch sees no CUDA device."""
    del config
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def auroc_by_ranks(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC as the Mann-Whitney statistic: mean rank of the positives, ties sharing their average rank.

    Written out here so that metric values reported by anomalib (torchmetrics' ROC curve) are checked
    against a computation that shares no code with them.
    """
    scores, labels = scores.flatten().double(), labels.flatten().bool()
    order = scores.argsort()
    _, inverse, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # 1-based rank of each run of equal scores' last element
    average = last - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = average[inverse]
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def f1_by_counts(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Binary F1 from the confusion counts: 2 TP / (2 TP + FP + FN)."""
    predicted, target = predicted.flatten().bool(), target.flatten().bool()
    true_positive = int((predicted & target).sum())
    false_positive = int((predicted & ~target).sum())
    false_negative = int((~predicted & target).sum())
    return 2 * true_positive / (2 * true_positive + false_positive + false_negative)


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


def grouped(**flat: Any) -> dict[str, Any]:
    """Test shorthand: options by their flat names (before 0.3) put into the constructor's groups.

    Most tests vary one or two options; naming them flat keeps those tests short. Tests of the groups
    themselves (``test_options.py``, the CLI and configs) use the grouped form directly.
    """
    from anomalib_agpt.module.legacy_options import group_flat_options

    return group_flat_options(flat)


def make_model(**flat: Any) -> Any:
    """An ``AnomalyGPT`` from options by their flat names (see :func:`grouped`)."""
    from anomalib_agpt import AnomalyGPT

    return AnomalyGPT(**grouped(**flat))
