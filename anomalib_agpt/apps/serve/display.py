"""What the web demo shows of an image: the part the model sees, at display size, with heatmap and mask drawn.

The drawing is anomalib's (:mod:`anomalib.visualization.image.functional`); the geometry is the
model's own pre-processing (:func:`~anomalib_agpt.model.pre_processing.visible_region`).
"""

from __future__ import annotations

import numpy as np
import torch
from anomalib.data import InferenceBatch
from anomalib.visualization.image.functional import (
    apply_colormap,
    overlay_image,
    overlay_images,
    visualize_pred_mask,
)
from PIL import Image
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt.model.pre_processing import visible_region
from anomalib_agpt.module.lightning_model import DEFAULT_IMAGE_SIZE

DISPLAY_SIDE = 448
"""Long side of the images shown on the page."""
HEATMAP_ALPHA = 0.5


def model_view(image: torch.Tensor, resize_mode: str, side: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """The part of ``(3, H, W)`` the model sees (the pre-processing's own geometry), at the upload's resolution."""
    top, left, height, width = visible_region(*image.shape[-2:], side, crop=resize_mode == "crop")
    return image[:, top : top + height, left : left + width]


def display_size(height: int, width: int, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """``(h, w)`` with the long side ``side`` and the aspect ratio kept."""
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_display(view: torch.Tensor) -> np.ndarray:
    """A ``(3, H, W)`` view in [0, 1] as an RGB uint8 array of :func:`display_size`."""
    size = display_size(*view.shape[-2:])
    resized = F.interpolate(view[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return (resized.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def render(
    view: np.ndarray,
    scores: InferenceBatch,
    stretch: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap overlay, mask overlay and the mask itself, at the size of ``view``, with anomalib's drawing.

    ``stretch`` spreads the colours over this image's own range: without fitted thresholds the raw map
    of a few-shot model can span 0.0-0.1, which would be one flat colour on an absolute scale.
    """
    size = view.shape[:2]
    anomaly_map = scores.anomaly_map.detach().float().cpu().reshape(1, 1, *scores.anomaly_map.shape[-2:])
    values = F.interpolate(anomaly_map, size=size, mode="bilinear", align_corners=False)[0, 0]
    if stretch:
        low, high = values.min(), values.max()
        values = (values - low) / (high - low) if high > low else torch.zeros_like(values)
    levels = (values.clamp(0, 1) * 255).round().byte().numpy()
    base = Image.fromarray(view)
    heatmap = overlay_image(base, apply_colormap(Image.fromarray(levels, mode="L")), alpha=HEATMAP_ALPHA)
    pred_mask = scores.pred_mask if scores.pred_mask is not None else scores.anomaly_map > 0.5
    pred_mask = pred_mask.detach().float().cpu().reshape(1, 1, *pred_mask.shape[-2:])
    mask = F.interpolate(pred_mask, size=size, mode="nearest")[0, 0] > 0.5
    fill = visualize_pred_mask(mask, mode="fill", alpha=0.4)
    outline = visualize_pred_mask(mask, mode="contour")
    drawn = overlay_images(base, [fill, outline], alpha=1.0)
    return np.asarray(heatmap.convert("RGB")), np.asarray(drawn.convert("RGB")), mask.numpy()
