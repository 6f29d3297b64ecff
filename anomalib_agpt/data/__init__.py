"""Datasets for tests and demos; see :mod:`anomalib_agpt.data.synthetic`."""

from anomalib_agpt.data.synthetic import SYNTHETIC_CATEGORIES, make_synthetic_mvtec

__all__ = ["SYNTHETIC_CATEGORIES", "make_synthetic_mvtec"]
