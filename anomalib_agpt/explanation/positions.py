"""Where an anomaly is, in the words of the answers: the 3x3 cell names the LLM is taught and graded on.

Training writes these sentences for synthetic anomalies; the grounding metric reads the same cells
back from a mask, so both sides share one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from anomalib_agpt.errors import OptionError
from anomalib_agpt.explanation.conversation import NORMAL_ANSWER

_ROWS = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))


def _third(fraction: float) -> int:
    """0, 1 or 2: which third of a side a relative coordinate lies in (boundaries belong to the lower third)."""
    if fraction <= 1 / 3:
        return 0
    if fraction <= 2 / 3:
        return 1
    return 2


def position_name(row: float, col: float, height: int, width: int) -> str:
    """Name the 3x3 cell of a point, in the words the LLM answers with (e.g. "top left", "center")."""
    if height <= 0 or width <= 0:
        raise OptionError(f"height and width must be positive, got {height}x{width}")
    return _ROWS[_third(row / height)][_third(col / width)]


def answer_for(centers: Sequence[tuple[float, float]], height: int, width: int) -> str:
    """The assistant's answer for anomalies centred at ``centers`` ((row, col) pixels); none -> normal."""
    if not centers:
        return NORMAL_ANSWER
    names = [position_name(row, col, height, width) for row, col in centers]
    if len(names) == 1:
        return f"Yes, there is an anomaly in the image, at the {names[0]} of the image."
    unique = list(dict.fromkeys(names))  # a place is named once, even if two anomalies share it
    places = unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + f" and {unique[-1]}"
    return f"Yes, there are {len(names)} anomalies in the image, they are at the {places} of the image."
