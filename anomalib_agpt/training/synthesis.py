"""Synthetic anomalies, the training signal AnomalyGPT learns from normal images only: the names in one place.

The generator itself is :mod:`~anomalib_agpt.training.synthetic_anomalies` (what is drawn, and why it
matches the original's distributions), its per-class settings
:mod:`~anomalib_agpt.training.synthesis_settings`, the cut-and-blend geometry
:mod:`~anomalib_agpt.training.patch_blending`, and the dataset of (normal, anomalous) pairs
:mod:`~anomalib_agpt.training.synthetic_pairs`. This module hands their public names on, so
``anomalib_agpt.training.synthesis`` (and 0.1's ``anomalib_agpt.synthesis``) stays the one import.
"""

from __future__ import annotations

from anomalib_agpt.explanation.positions import answer_for, position_name
from anomalib_agpt.training.synthesis_settings import (
    MVTEC_AD_CLASSES,
    VISA_CLASSES,
    SynthesisSettings,
    normalise_class_name,
    object_settings,
    settings_for,
    texture_settings,
)
from anomalib_agpt.training.synthetic_anomalies import SyntheticSample, synthesize
from anomalib_agpt.training.synthetic_pairs import SyntheticPairs, collate_pairs

__all__ = [
    "MVTEC_AD_CLASSES",
    "VISA_CLASSES",
    "SynthesisSettings",
    "SyntheticPairs",
    "SyntheticSample",
    "answer_for",
    "collate_pairs",
    "normalise_class_name",
    "object_settings",
    "position_name",
    "settings_for",
    "synthesize",
    "texture_settings",
]
