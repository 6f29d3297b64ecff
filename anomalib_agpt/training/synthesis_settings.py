"""Per-class settings of the synthetic-anomaly generator: AnomalyGPT's tables for MVTec AD and VisA.

The numbers are facts about the original training recipe (CASIA-IVA-Lab/AnomalyGPT, its MVTec AD and
VisA datasets), written out here as data: per class, how wide a patch may be, how strongly a change
must show to be labelled anomalous, and which plain background a patch must not land on. Classes the
original has no entry for get a documented object or texture default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from anomalib_agpt.errors import OptionError

__all__ = [
    "MVTEC_AD_CLASSES",
    "MVTEC_TEXTURES",
    "VISA_CLASSES",
    "SynthesisSettings",
    "normalise_class_name",
    "object_settings",
    "settings_for",
    "texture_settings",
]

Bounds = tuple[float, float]
"""``(low, high)`` of a range."""
WidthBounds = tuple[Bounds, Bounds]
"""Patch half-width bounds ``((rows low, rows high), (cols low, cols high))`` as fractions of height and width."""
Kind = Literal["object", "texture"]

_ANY_WIDTH: WidthBounds = ((0.03, 0.4), (0.03, 0.4))
_OBJECT_RESIZE: Bounds = (0.7, 1.3)
_TEXTURE_RESIZE: Bounds = (0.5, 2.0)
_OBJECT_LOGISTIC: Bounds = (1 / 12, 24.0)
_TEXTURE_LOGISTIC: Bounds = (1 / 3, 7.0)


def _pair(value: Sequence[float], name: str) -> Bounds:
    """``value`` as a tuple of two floats (lists from a config become hashable tuples)."""
    if len(value) != 2:
        raise OptionError(f"{name} must be a pair (low, high), got {value!r}")
    return float(value[0]), float(value[1])


def _width_bounds(value: Sequence[float] | Sequence[Sequence[float]]) -> WidthBounds:
    """Per-axis half-width bounds; one ``(low, high)`` pair applies to both axes."""
    if len(value) == 2 and all(isinstance(each, int | float) for each in value):
        pair = _pair(value, "width_bounds")  # type: ignore[arg-type]
        return pair, pair
    if len(value) != 2:
        raise OptionError(f"width_bounds must be ((low, high), (low, high)) or (low, high), got {value!r}")
    return _pair(value[0], "width_bounds[0]"), _pair(value[1], "width_bounds[1]")  # type: ignore[arg-type]


@dataclass(frozen=True)
class SynthesisSettings:
    """How patches are drawn, placed and labelled; frozen so one instance can be shared by all workers.

    The defaults are the object default (:func:`object_settings`). Distances are in pixels of the target
    image (its size is the unit of the fractions); intensities are 0..255.

    Attributes:
        width_bounds: Patch *half*-width bounds per axis, ``((rows low, rows high), (cols low, cols high))``
            as fractions of the image's height and width; a single ``(low, high)`` pair is used for both axes.
            The same pixel bounds also limit each side of the rescaled patch (as in the original, so a
            pasted patch is at most ``high`` of the image a side).
        resize_bounds: Range the rescale factor, drawn from ``N(1, resize_spread)``, is clipped to.
        second_patch_probability: Chance of attempting a second patch (the first is always attempted).
        skip_background: ``(brightness, tolerance)``: a pixel whose mean of R, G, B is within ``tolerance`` of
            ``brightness`` is plain background (objects photographed on a plain ground). A patch is cut where
            the source has object pixels and pasted where they overlap the target's object; changes where
            both source and target are background are not labelled. ``None``: everything is foreground.
        logistic: ``(k, x0)`` of the soft label ``1 / (1 + exp(-k * (change - x0)))``, ``change`` being the
            disk-median-filtered mean absolute RGB change.
        half_width_gamma: ``(shape, scale, offset)``: a half-width is ``offset + Gamma(shape, scale)`` of the
            side, clipped to ``width_bounds``.
        resize_spread: Standard deviation of the rescale factor around 1.
        min_object: Share of object pixels a cut (and a rescaled) patch must exceed (background rule only).
        min_overlap: Share of the patch's object pixels that must land on target object pixels.
        min_change: Mean absolute RGB change (0..255) a pixel must exceed to be labelled at all.
        attempts: Random places tried for the cut and for the paste before the patch is given up.

    """

    width_bounds: WidthBounds = _ANY_WIDTH
    resize_bounds: Bounds = _OBJECT_RESIZE
    second_patch_probability: float = 0.5
    skip_background: tuple[int, int] | None = None
    logistic: Bounds = _OBJECT_LOGISTIC
    half_width_gamma: tuple[float, float, float] = (2.0, 0.05, 0.03)
    resize_spread: float = 0.5
    min_object: float = 0.0
    min_overlap: float = 0.25
    min_change: float = 1.0
    attempts: int = 200

    def __post_init__(self) -> None:
        """Normalise sequences to tuples and reject settings that would silently produce no patch."""
        object.__setattr__(self, "width_bounds", _width_bounds(self.width_bounds))
        object.__setattr__(self, "resize_bounds", _pair(self.resize_bounds, "resize_bounds"))
        object.__setattr__(self, "logistic", _pair(self.logistic, "logistic"))
        for low, high in self.width_bounds:
            if not 0 < low <= high <= 0.5:
                raise OptionError(f"width_bounds must satisfy 0 < low <= high <= 0.5 per axis, got {self.width_bounds}")
        low, high = self.resize_bounds
        if not 0 < low <= high:
            raise OptionError(f"resize_bounds must satisfy 0 < low <= high, got {self.resize_bounds}")
        if not 0 <= self.second_patch_probability <= 1:
            raise OptionError(f"second_patch_probability must be in [0, 1], got {self.second_patch_probability}")
        if self.skip_background is not None:
            brightness, tolerance = self.skip_background
            if not 0 <= brightness <= 255 or tolerance < 0:
                raise OptionError(f"skip_background must be (0..255, >= 0), got {self.skip_background}")
            object.__setattr__(self, "skip_background", (int(brightness), int(tolerance)))
        if self.logistic[0] <= 0:
            raise OptionError(f"logistic k must be positive, got {self.logistic}")
        shape, scale, offset = self.half_width_gamma
        if shape <= 0 or scale <= 0 or offset < 0:
            raise OptionError(
                f"half_width_gamma must be (shape > 0, scale > 0, offset >= 0), got {self.half_width_gamma}"
            )
        if self.resize_spread < 0:
            raise OptionError(f"resize_spread must be >= 0, got {self.resize_spread}")
        if not 0 <= self.min_object < 1 or not 0 <= self.min_overlap < 1:
            raise OptionError(
                f"min_object and min_overlap must be in [0, 1), got {self.min_object}, {self.min_overlap}"
            )
        if self.min_change < 0:
            raise OptionError(f"min_change must be >= 0, got {self.min_change}")
        if self.attempts < 1:
            raise OptionError(f"attempts must be at least 1, got {self.attempts}")


def object_settings(skip_background: tuple[int, int] | None = None) -> SynthesisSettings:
    """The default for an object class the tables lack: any width up to 0.4, mild rescale, bottle-like label.

    Half-widths 0.03-0.4 on both axes, rescale within (0.7, 1.3) (the generator's own default in the
    original), logistic ``(1/12, 24)`` (the original's most common object entry) and, unless given, no
    background rule (an unknown class's background is unknown).
    """
    return SynthesisSettings(skip_background=skip_background)


def texture_settings() -> SynthesisSettings:
    """The default for a texture class the tables lack: MVTec AD's carpet, grid, leather and tile settings.

    Half-widths 0.03-0.4, rescale within (0.5, 2) (a stronger rescale still looks like the texture),
    logistic ``(1/3, 7)`` and no background rule (a texture is foreground everywhere).
    """
    return SynthesisSettings(resize_bounds=_TEXTURE_RESIZE, logistic=_TEXTURE_LOGISTIC)


def _mvtec(
    width_bounds: WidthBounds,
    logistic: Bounds,
    background: tuple[int, int] | None = None,
    *,
    texture: bool = False,
) -> SynthesisSettings:
    """One MVTec AD entry: objects rescale within (0.7, 1.3), textures within (0.5, 2)."""
    return SynthesisSettings(
        width_bounds=width_bounds,
        resize_bounds=_TEXTURE_RESIZE if texture else _OBJECT_RESIZE,
        skip_background=background,
        logistic=logistic,
    )


_BRIGHT = (200, 60)
"""A light grey ground (brightness, tolerance)."""
_DARK = (20, 20)
"""A black ground."""

_MVTEC_AD: dict[str, SynthesisSettings] = {
    "bottle": _mvtec(_ANY_WIDTH, (1 / 12, 24.0), _BRIGHT),
    "cable": _mvtec(((0.05, 0.4), (0.05, 0.4)), (1 / 12, 24.0)),
    "capsule": _mvtec(((0.03, 0.15), (0.03, 0.4)), (1 / 2, 4.0), _BRIGHT),
    "hazelnut": _mvtec(((0.03, 0.35), (0.03, 0.35)), (1 / 12, 24.0), _DARK),
    "metal_nut": _mvtec(_ANY_WIDTH, (1 / 3, 7.0), _DARK),
    "pill": _mvtec(((0.03, 0.2), (0.03, 0.4)), (1 / 3, 7.0), _DARK),
    "screw": _mvtec(((0.03, 0.12), (0.03, 0.12)), (1.0, 3.0), _BRIGHT),
    "toothbrush": _mvtec(((0.03, 0.4), (0.03, 0.2)), (1 / 6, 15.0), _DARK),
    "transistor": _mvtec(_ANY_WIDTH, (1 / 6, 15.0)),
    "zipper": _mvtec(((0.03, 0.4), (0.03, 0.2)), (1 / 6, 15.0), _BRIGHT),
    "carpet": _mvtec(_ANY_WIDTH, _TEXTURE_LOGISTIC, texture=True),
    "grid": _mvtec(_ANY_WIDTH, _TEXTURE_LOGISTIC, texture=True),
    "leather": _mvtec(_ANY_WIDTH, _TEXTURE_LOGISTIC, texture=True),
    "tile": _mvtec(_ANY_WIDTH, _TEXTURE_LOGISTIC, texture=True),
    "wood": _mvtec(_ANY_WIDTH, (1 / 6, 15.0), texture=True),
}

MVTEC_AD_CLASSES: tuple[str, ...] = tuple(_MVTEC_AD)
"""The 15 MVTec AD classes, each with its own entry."""
MVTEC_TEXTURES: frozenset[str] = frozenset({"carpet", "grid", "leather", "tile", "wood"})

VISA_CLASSES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
"""The 12 VisA classes; the original trains all of them with one setting (:data:`_VISA`)."""

_VISA = SynthesisSettings(width_bounds=_ANY_WIDTH, resize_bounds=_TEXTURE_RESIZE, logistic=_OBJECT_LOGISTIC)
"""VisA in the original: half-widths 0.03-0.4, logistic (1/12, 24), no background rule, rescale (0.5, 2)."""


def normalise_class_name(name: str) -> str:
    """``"Metal Nut"``, ``"metal-nut"`` and ``"metal_nut"`` all become ``"metal_nut"``."""
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def settings_for(name: str | None, default: Kind = "object") -> SynthesisSettings:
    """The generator settings of a class: AnomalyGPT's own entry, else the ``default`` kind's.

    Args:
        name: A class name in any spelling of words (``metal_nut``, ``metal nut``, ``Metal-Nut``).
            MVTec AD's 15 classes get the original's per-class entries, VisA's 12 the original's VisA
            setting; any other name (or ``None``) gets :func:`object_settings` or :func:`texture_settings`.
        default: Which default an unknown class gets: ``"object"`` or ``"texture"``.

    """
    if default not in ("object", "texture"):
        raise OptionError(f"default must be 'object' or 'texture', got {default!r}")
    key = normalise_class_name(name) if name else ""
    if key in _MVTEC_AD:
        return _MVTEC_AD[key]
    if key in VISA_CLASSES:
        return _VISA
    return texture_settings() if default == "texture" else object_settings()
