"""CLIP pre-processing as the original computes it, on anomalib's tensor pipeline.

The original resizes PIL images; PIL resamples 8-bit data and rounds/clamps to 8 bits. A float
tensor resize differs by up to ~0.3 (normalised units) at sharp edges, the 8-bit tensor resize
of torchvision follows PIL to within one grey level. :class:`PilCompatibleResize` therefore takes
float images in [0, 1] through uint8 around the resize. Its exportable copy (antialias off, which
anomalib sets for ONNX/OpenVINO) is a plain float resize, so tracing is unaffected.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils._transform_registry import TRANSFORM_REGISTRY
from torchvision import tv_tensors
from torchvision.transforms.v2 import CenterCrop, Compose, InterpolationMode, Normalize, Resize
from torchvision.transforms.v2 import functional as TF  # noqa: N812

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ResizeMode = Literal["crop", "squash"]


class PilCompatibleResize(Resize):
    """Bicubic resize that matches PIL on 8-bit images by resizing them as uint8."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: ANN401
        """Resize; float images in [0, 1] (not masks) go through uint8 when antialiasing is on."""
        if not self._through_uint8(inpt):
            return super().transform(inpt, params)
        resized = super().transform(TF.to_dtype(inpt, torch.uint8, scale=True), params)
        return TF.to_dtype(resized, inpt.dtype, scale=True)

    def _through_uint8(self, inpt: Any) -> bool:  # noqa: ANN401
        return (
            bool(self.antialias)
            and isinstance(inpt, torch.Tensor)
            and not isinstance(inpt, tv_tensors.Mask)
            and inpt.is_floating_point()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and bool(inpt.min() >= 0)
            and bool(inpt.max() <= 1)
        )


# anomalib persists pre-processor transforms in checkpoints only for allow-listed classes, and
# restores an unlisted one as *no transform at all*; list ours so checkpoints keep it.
TRANSFORM_REGISTRY.register(PilCompatibleResize)


def build_pre_processor(side: int, resize_mode: ResizeMode) -> PreProcessor:
    """``crop``: short side to ``side`` + centre crop (original evaluation); ``squash``: ``side x side``."""
    if resize_mode == "crop":
        resize = [PilCompatibleResize(side, interpolation=InterpolationMode.BICUBIC, antialias=True), CenterCrop(side)]
    elif resize_mode == "squash":
        resize = [PilCompatibleResize((side, side), interpolation=InterpolationMode.BICUBIC, antialias=True)]
    else:
        msg = f"resize_mode='{resize_mode}': expected 'crop' or 'squash'."
        raise ValueError(msg)
    return PreProcessor(transform=Compose([*resize, Normalize(mean=CLIP_MEAN, std=CLIP_STD)]))
