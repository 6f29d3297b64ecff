"""Datasets, image reading and class names: the data everything above reads (synthetic sets, images, categories)."""

from anomalib_agpt.data.images import PredictImages, geometry_warning, read_rgb_image
from anomalib_agpt.data.multi_category import MultiCategory
from anomalib_agpt.data.synthetic import SYNTHETIC_CATEGORIES, make_synthetic_mvtec

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "MultiCategory",
    "PredictImages",
    "geometry_warning",
    "make_synthetic_mvtec",
    "read_rgb_image",
]
