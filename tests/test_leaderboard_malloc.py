"""AnomalyGPT cells lift Patchcore's malloc threshold while they run, and put it back (glibc only).

Read from glibc itself: ``mallinfo2().hblks`` counts the chunks malloc serves by ``mmap``. Under
``MALLOC_MMAP_THRESHOLD_=131072`` a 16 MiB buffer is one such chunk; inside an AnomalyGPT cell it is not.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from anomalib_agpt.apps.leaderboard.cells import M_MMAP_THRESHOLD, anomalygpt_malloc

PATCHCORE_THRESHOLD = 131072


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


LIBC = ctypes.CDLL(None) if os.name == "posix" else None
pytestmark = pytest.mark.skipif(
    LIBC is None or not hasattr(LIBC, "mallinfo2") or not hasattr(LIBC, "mallopt"), reason="needs glibc 2.33+"
)


def _mmapped_for_16_mebibytes() -> int:
    """How many more chunks malloc maps while a 16 MiB buffer lives (a size the heap has no free room for)."""
    LIBC.mallinfo2.restype = MallInfo2
    LIBC.malloc_trim(0)  # free heap room goes back first: the buffer is served by the threshold's rule
    before = LIBC.mallinfo2().hblks
    buffer = np.empty(1 << 21)  # one malloc of 16 MiB (numpy's data: plain malloc)
    during = LIBC.mallinfo2().hblks
    del buffer
    return during - before


def test_anomalygpt_cells_lift_the_threshold_and_put_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(PATCHCORE_THRESHOLD))
    LIBC.mallopt(M_MMAP_THRESHOLD, PATCHCORE_THRESHOLD)  # what the environment does when a process starts
    assert _mmapped_for_16_mebibytes() == 1
    with anomalygpt_malloc("AnomalyGPT-fullshot"):
        assert _mmapped_for_16_mebibytes() == 0
    assert _mmapped_for_16_mebibytes() == 1  # Patchcore's setting is back
    with anomalygpt_malloc("Patchcore"):
        assert _mmapped_for_16_mebibytes() == 1


def test_without_the_environment_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    calls = []
    monkeypatch.setattr(LIBC, "mallopt", lambda *args: calls.append(args), raising=False)
    with anomalygpt_malloc("AnomalyGPT-4shot"):
        pass
    assert calls == []
