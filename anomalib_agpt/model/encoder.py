"""ImageBind's vision and text towers, built from open_clip's classes.

ImageBind-Huge is architecturally OpenCLIP ViT-H/14 with two differences that
:func:`anomalib_agpt.weights.checkpoints.convert_imagebind` and this module absorb: a Conv3d stem over two
identical frames (converted to a Conv2d) and LayerNorm eps 1e-6 everywhere. The towers are built on
the ``meta`` device and the checkpoint tensors are assigned, so a 4.5 GB file is never held twice.
The tap forward is written against the module attributes shared by open_clip 2.24 and 3.x.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from open_clip.transformer import LayerNorm, TextTransformer, VisionTransformer
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt.errors import OptionError
from anomalib_agpt.model.pre_processing import CLIP_MEAN, CLIP_STD
from anomalib_agpt.weights.checkpoints import NUM_TAPS, CheckpointError, ImageBindSizes, load_strict

LAYER_NORM_EPS = 1e-6


def tap_indices(num_layers: int, num_taps: int = NUM_TAPS) -> tuple[int, ...]:
    """0-based blocks whose output AnomalyGPT taps: ``(i+1)*N/num_taps - 1`` (32 -> 7, 15, 23, 31)."""
    if num_layers % num_taps:
        msg = f"the vision tower has {num_layers} blocks; AnomalyGPT needs a multiple of {num_taps}."
        raise CheckpointError(msg)
    return tuple((i + 1) * num_layers // num_taps - 1 for i in range(num_taps))


def _heads(width: int, heads: int, option: str) -> int:
    if heads < 1 or width % heads:
        msg = f"{option}={heads} does not divide the tower width {width}; pass a divisor of {width}."
        raise OptionError(msg)
    return heads


def _causal_mask(length: int) -> torch.Tensor:
    return torch.full((length, length), float("-inf")).triu_(1)


def _check_materialised(module: nn.Module, source: str) -> None:
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        msg = f"{source}: tensors not filled by the checkpoint: {left}"
        raise CheckpointError(msg)


class VisionFeatures(NamedTuple):
    """What one pass of the vision tower yields; every consumer reads from it."""

    patch_tokens: tuple[torch.Tensor, ...]
    """Residual stream after each tap block, CLS dropped, no final norm: ``NUM_TAPS x (B, N, W)``."""
    embedding: torch.Tensor
    """L2-normalised global embedding (final norm -> CLS -> projection): ``(B, D)``."""


class ImageBindVisionEncoder(nn.Module):
    """ImageBind's vision trunk and head; returns the tap tokens and the global embedding."""

    def __init__(self, sizes: ImageBindSizes, heads: int) -> None:
        super().__init__()
        self.visual = VisionTransformer(
            image_size=sizes.image_size,
            patch_size=sizes.patch_size,
            width=sizes.vision_width,
            layers=sizes.vision_layers,
            heads=_heads(sizes.vision_width, heads, "vision_heads"),
            mlp_ratio=sizes.vision_mlp_ratio,
            output_dim=sizes.embed_dim,
            act_layer=nn.GELU,
            norm_layer=partial(LayerNorm, eps=LAYER_NORM_EPS),
        )
        self.taps = tap_indices(sizes.vision_layers)
        self.image_size = sizes.image_size
        self.grid_size = sizes.image_size // sizes.patch_size

    @property
    def width(self) -> int:
        """Channels of the tapped patch tokens (1280 for ImageBind-Huge)."""
        return self.visual.conv1.weight.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the tower's weights (see ``AnomalyGPTModel.configure_encoder``)."""
        return self.visual.conv1.weight.dtype

    @property
    def embed_dim(self) -> int:
        """Width of the global embedding (the joint space; 1024 for ImageBind-Huge)."""
        return self.visual.proj.shape[1]

    pixel_mean = CLIP_MEAN
    pixel_std = CLIP_STD

    def forward(self, images: torch.Tensor) -> VisionFeatures:
        """Encode pre-processed ``(B, 3, S, S)`` images once for every consumer."""
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        sequence_first = not getattr(visual.transformer, "batch_first", False)
        if sequence_first:
            x = x.transpose(0, 1)
        taps = []
        for index, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if index in self.taps:
                taps.append(x.transpose(0, 1) if sequence_first else x)
        # The last tap is the last block, so its CLS token feeds the head.
        embedding = visual.ln_post(taps[-1][:, 0]) @ visual.proj
        return VisionFeatures(
            patch_tokens=tuple(tap[:, 1:] for tap in taps),
            embedding=F.normalize(embedding, dim=-1),
        )


class ImageBindTextEncoder(nn.Module):
    """ImageBind's text tower: L2-normalised sentence embeddings times its logit scale."""

    def __init__(self, sizes: ImageBindSizes, heads: int) -> None:
        super().__init__()
        self.text = TextTransformer(
            context_length=sizes.context_length,
            vocab_size=sizes.vocab_size,
            width=sizes.text_width,
            heads=_heads(sizes.text_width, heads, "text_heads"),
            layers=sizes.text_layers,
            mlp_ratio=sizes.text_mlp_ratio,
            output_dim=sizes.embed_dim,
            act_layer=nn.GELU,
            norm_layer=partial(LayerNorm, eps=LAYER_NORM_EPS),
        )
        self.register_buffer("logit_scale", torch.ones(()), persistent=False)
        self.context_length = sizes.context_length

    def tokenize(self, sentences: Sequence[str]) -> torch.Tensor:
        """CLIP BPE ids (open_clip's bundled vocabulary, identical to ImageBind's)."""
        return open_clip.tokenize(list(sentences), context_length=self.context_length)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embed ``(N, context)`` token ids -> ``(N, D)``."""
        pooled = self.text(token_ids.to(self.text.positional_embedding.device))
        return F.normalize(pooled, dim=-1) * self.logit_scale

    @torch.no_grad()
    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """Embed sentences -> ``(N, D)``."""
        return self(self.tokenize(sentences))


def build_encoders(
    sizes: ImageBindSizes,
    vision_state: Mapping[str, torch.Tensor],
    text_state: Mapping[str, torch.Tensor],
    text_logit_scale: torch.Tensor,
    vision_heads: int,
    text_heads: int,
    source: Path | str,
) -> tuple[ImageBindVisionEncoder, ImageBindTextEncoder]:
    """Build both towers on ``meta`` and assign the converted checkpoint tensors strictly."""
    with torch.device("meta"):
        vision = ImageBindVisionEncoder(sizes, vision_heads)
        text = ImageBindTextEncoder(sizes, text_heads)
    load_strict(vision.visual, vision_state, f"ImageBind checkpoint '{source}' (vision tower)")
    load_strict(text.text, text_state, f"ImageBind checkpoint '{source}' (text tower)")
    text.text.attn_mask = _causal_mask(sizes.context_length)
    text.logit_scale = text_logit_scale.detach().clone().float()
    for module in (vision, text):
        _check_materialised(module, f"ImageBind checkpoint '{source}'")
        module.requires_grad_(False)
    return vision, text
