"""CLIP pre-processing as the original computes it, one implementation for evaluation and export.

The original resizes 8-bit PIL images: bicubic (a = -0.5) with antialiasing, a horizontal then a
vertical pass, each rounded and clamped to 8 bits. :class:`ClipResize` writes exactly that as two
resampling-matrix products built from the input's shape, in plain tensor ops. The same code runs
in ``Engine.fit/test/predict``, in ``forward`` and in the traced ONNX/OpenVINO graph (dynamic
height and width, short-side resize and centre crop included), so an exported model computes the
numbers anomalib evaluated. Evaluation equals PIL on every pixel (weights in float64); the exported
graph computes the weights in float32, which moves under 0.1 % of the pixels by one grey level at
real sizes. torch's own uint8 bicubic kernel is off by one grey level on about half of them.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils._transform_registry import TRANSFORM_REGISTRY
from torchvision import tv_tensors
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize, Transform
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from anomalib_agpt.data.images import ResizeMode
from anomalib_agpt.errors import check_choice

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's
IMAGENET_STD = (0.229, 0.224, 0.225)
CUBIC_A = -0.5  # PIL's (and torch's antialiased) bicubic coefficient
PIL_WEIGHT_ONE = 2.0**22  # PIL keeps resampling weights in 22-bit fixed point
TO_UINT8 = 255.999  # torchvision's float -> uint8 scale: exact for images read from 8-bit files


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5; zero outside (-2, 2)."""
    x = x.abs()  # the operations in PIL's order, so that float64 rounds as it does
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * CUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resampling_weights(in_size: int, resized: torch.Tensor, offset: torch.Tensor, side: int) -> torch.Tensor:
    """PIL's fixed-point weights of rows ``offset .. offset + side`` of the (resized x in_size) bicubic matrix.

    ``resized`` is the length of the whole resized axis (before cropping); both it and ``offset``
    are 0-d tensors, so that a traced graph computes them from the input's shape. Weights are
    normalised, then rounded to PIL's 22 fractional bits: integers, returned as their three bytes
    ``(3, side, in_size)`` (high, middle, low; only the high one signed) in float32.
    """
    taps = torch.arange(in_size, dtype=resized.dtype, device=resized.device) + 0.5
    scale = in_size / resized
    support = torch.clamp(scale, min=1.0)  # the kernel widens when downscaling (antialiasing)
    centres = (torch.arange(side, dtype=resized.dtype, device=resized.device) + offset + 0.5) * scale
    weights = _cubic((taps[None, :] - centres[:, None]) * (1 / support))
    weights = weights / weights.sum(dim=1, keepdim=True) * PIL_WEIGHT_ONE
    fixed = torch.trunc(weights + torch.where(weights < 0, -0.5, 0.5))
    high = torch.floor(fixed / 65536)
    rest = fixed - high * 65536
    middle = torch.floor(rest / 256)
    return torch.stack([high, middle, rest - middle * 256]).float()


def _resample(byte_sums: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8((sum + 2**21) >> 22)`` from the three byte-plane sums ``(..., 3, h, w)``.

    Each plane's sum is an integer below 2**24, so float32 holds it exactly whatever the order of
    summation (for downscaling up to ~64x); carrying the low planes up keeps the result exact too.
    """
    high, middle, low = byte_sums.unbind(dim=-3)
    middle = middle + torch.floor(low / 256)
    high = high + torch.floor(middle / 256)
    return torch.floor((high + 32) / 64).clamp(0, 255)


def _centre_offset(resized: torch.Tensor, side: int) -> torch.Tensor:
    """Torchvision's centre-crop start, ``round((resized - side) / 2)`` with Python's half-to-even."""
    excess = resized - side
    half = torch.floor(excess / 2)
    return half + torch.remainder(excess, 2) * torch.remainder(half, 2)


def resize_like_pil(images: torch.Tensor, side: int, crop: bool) -> torch.Tensor:
    """Float images in [0, 1], (..., H, W) -> (..., side, side), as PIL resizes their 8-bit version.

    ``crop``: the short side goes to ``side`` (the long one to ``floor(side * long / short)``) and
    the centre ``side x side`` is kept; else both sides go to ``side``. Values outside [0, 1] are
    clamped, as an 8-bit image holds none. Pixel sums are exact integer arithmetic in float32 in every
    runtime (eager, ONNX, OpenVINO at f32); only the weights' dtype differs (see :func:`_resampling_pair`).
    """
    height, width = images.shape[-2], images.shape[-1]
    levels = torch.floor(images.float().clamp(0, 1) * TO_UINT8)
    if _tracing():  # weights from the input's (symbolic) shape, in float32 (OpenVINO has no float64)
        rows, columns = _resampling_pair(height, width, side, crop, images.new_ones(()))
    elif (height, width) == (side, side):
        return (levels / 255).to(images.dtype)  # both weight matrices are the identity: only the 8-bit rounding
    else:  # float64 weights, as PIL computes them; once per image size
        work = torch.float32 if images.device.type == "mps" else torch.float64
        rows, columns = _cached_resampling_pair(height, width, side, crop, images.device, work)
    levels = _resample(levels.unsqueeze(-3) @ columns.transpose(-1, -2))  # horizontal pass first, as PIL
    levels = _resample(rows @ levels.unsqueeze(-3))
    return (levels / 255).to(images.dtype)


def visible_region(height: int, width: int, side: int, crop: bool) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the part of an image that the model sees, in the image's pixels.

    The same resize and crop geometry as :func:`resize_like_pil` (for showing people the model's view).
    """
    if not crop:
        return 0, 0, height, width
    one = torch.ones((), dtype=torch.float64)
    resized_h, resized_w = (float(length) for length in _resized_lengths(one * height, one * width, side, crop))
    top = float(_centre_offset(one * resized_h, side)) * height / resized_h
    left = float(_centre_offset(one * resized_w, side)) * width / resized_w
    return round(top), round(left), round(side * height / resized_h), round(side * width / resized_w)


def _resized_lengths(
    height: torch.Tensor, width: torch.Tensor, side: int, crop: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both axes after the resize, before the crop: short side to ``side`` (``crop``), else ``side x side``."""
    if not crop:
        return height * 0 + side, width * 0 + side
    short = torch.minimum(height, width)
    return torch.floor(side * height / short), torch.floor(side * width / short)


def _resampling_pair(
    height: int, width: int, side: int, crop: bool, one: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column weights; ``one`` (a 0-d tensor) gives dtype and device, and keeps a trace symbolic.

    In float32 a weight that lies within ~1e-7 of a rounding step of PIL's fixed point may round the
    other way; the pixel sums are exact in both dtypes.
    """
    resized_h, resized_w = _resized_lengths(one * height, one * width, side, crop)
    rows = _resampling_weights(height, resized_h, _centre_offset(resized_h, side), side)
    columns = _resampling_weights(width, resized_w, _centre_offset(resized_w, side), side)
    return rows, columns


@functools.lru_cache(maxsize=32)
def _cached_resampling_pair(
    height: int, width: int, side: int, crop: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager weights per image size: a dataset of one camera computes them once."""
    return _resampling_pair(height, width, side, crop, torch.ones((), dtype=dtype, device=device))


def _tracing() -> bool:
    return torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class ClipResize(Resize):
    """Resize (and centre crop) to ``size x size`` exactly as the original's PIL pre-processing.

    A ``Resize`` so that anomalib's datamodules resize images in the dataset (before collation).
    Masks take the same geometry: nearest neighbour (anomalib's rule), or with ``mask_threshold`` the
    original evaluation's: bilinear (antialiased, as PIL) on the 0/1 mask, then ``> mask_threshold``.
    ``antialias`` is ignored: anomalib switches it off for export, but this resize is exportable as it is.
    """

    def __init__(self, size: int | Sequence[int], crop: bool = True, mask_threshold: float | None = None) -> None:
        side = size if isinstance(size, int) else int(size[0])
        super().__init__(side if crop else (side, side), interpolation=InterpolationMode.BICUBIC, antialias=True)
        self.side = side
        self.crop = crop
        self.mask_threshold = mask_threshold

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: ANN401
        """Images: the PIL-exact path; masks: nearest neighbour or the threshold rule; then the centre crop."""
        if isinstance(inpt, tv_tensors.Mask) and self.mask_threshold is not None:
            return _like(self._thresholded_mask(inpt.as_subclass(torch.Tensor)), inpt)
        if isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.Mask):
            # tv_tensors unwrap to plain tensors (a plain one is used as it is: export traces through it)
            images = inpt.as_subclass(torch.Tensor) if isinstance(inpt, tv_tensors.TVTensor) else inpt
            if images.is_floating_point():
                return _like(resize_like_pil(images, self.side, self.crop), inpt)
            if images.dtype == torch.uint8:
                resized = resize_like_pil(TF.to_dtype(images, torch.float32, scale=True), self.side, self.crop)
                return _like(TF.to_dtype(resized, torch.uint8, scale=True), inpt)
        resized = super().transform(inpt, params)  # masks (nearest), PIL images, boxes
        return TF.center_crop(resized, [self.side, self.side]) if self.crop else resized

    def _thresholded_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Bilinear resize of the 0/1 mask (its dtype kept), centre crop, then ``> mask_threshold``."""
        if mask.shape[-2:] == (self.side, self.side):
            return mask  # already at the model's size (the dataset resized it): a second pass changes nothing
        size = [self.side] if self.crop else [self.side, self.side]
        values = mask.float().unsqueeze(0) if mask.ndim == 2 else mask.float()
        resized = TF.resize(values, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        resized = TF.center_crop(resized, [self.side, self.side]) if self.crop else resized
        binary = (resized > self.mask_threshold).to(mask.dtype)
        return binary[0] if mask.ndim == 2 else binary


def _like(output: torch.Tensor, inpt: torch.Tensor) -> torch.Tensor:
    """``output`` as the tv_tensor type of ``inpt``; plain tensors stay plain (no subclass round trip to trace)."""
    return tv_tensors.wrap(output, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else output


# anomalib persists pre-processor transforms in checkpoints only for allow-listed classes, and
# restores an unlisted one as *no transform at all*; list ours so checkpoints keep it.
TRANSFORM_REGISTRY.register(ClipResize, aliases=("anomalib_agpt.pre_processing.ClipResize",))  # its path before 0.2


class PilCompatibleResize(ClipResize):
    """The resize of 0.1, kept so that torch exports pickled by 0.1 still load; it resizes as ``ClipResize``.

    0.1 resized the short side (``size=[side]``) and cropped in a following ``CenterCrop`` (a no-op
    after this one), or squashed (``size=[side, side]``). Unpickling sets no ``side``/``crop``.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Derive ``side`` and ``crop`` from 0.1's ``size``."""
        super().__setstate__(state)
        self.side = int(self.size[0])
        self.crop = len(self.size) == 1


# Checkpoints written by 0.1 hold ``PilCompatibleResize`` (+ ``CenterCrop`` in crop mode): upgraded on load.
LEGACY_RESIZE_PATH = "anomalib_agpt.pre_processing.PilCompatibleResize"  # its module before 0.2


def upgrade_transform_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rewrite a 0.1 checkpoint's transform spec (PIL-compatible resize, centre crop) as ``ClipResize``."""
    if not spec or not spec.get("class_path", "").endswith("Compose"):
        return spec
    steps = spec["init_args"].get("transforms", [])
    if not steps or steps[0].get("class_path") != LEGACY_RESIZE_PATH:
        return spec
    size = steps[0]["init_args"]["size"]
    crop = len(steps) > 1 and steps[1].get("class_path", "").endswith("CenterCrop")
    resize = {"class_path": TRANSFORM_REGISTRY.path_for(ClipResize), "init_args": {"size": size[0], "crop": crop}}
    rest = steps[2:] if crop else steps[1:]
    return {**spec, "init_args": {**spec["init_args"], "transforms": [resize, *rest]}}


class ClipPreProcessor(PreProcessor):
    """anomalib's pre-processor with a transform of its own for training batches.

    The original evaluates on the ``resize_mode`` images (``transform``; also validation, test,
    predict and export) but trains on images squashed to ``side x side`` (``train_transform``).
    anomalib resizes in the datasets with ``transform``'s resize, for every subset: the model puts
    :func:`dataset_augmentations` with ``train_transform``'s resize on the train set when it trains.
    ``train_transform`` is rebuilt from the model's options, so checkpoints keep only ``transform``.
    """

    def __init__(self, transform: Transform | None = None, train_transform: Transform | None = None) -> None:
        super().__init__(transform=transform)
        self.train_transform = train_transform

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:  # noqa: ANN401
        """Training batches take ``train_transform`` (``transform`` when there is none)."""
        del trainer, pl_module, batch_idx
        transform = self.train_transform if self.train_transform is not None else self.transform
        if transform is not None:
            batch.image, batch.gt_mask = transform(batch.image, batch.gt_mask)

    @property
    def train_resize(self) -> Resize | None:
        """The resize of ``train_transform`` (``None`` without one)."""
        if self.train_transform is None:
            return None
        steps = self.train_transform.transforms if isinstance(self.train_transform, Compose) else [self.train_transform]
        return next((step for step in steps if isinstance(step, Resize)), None)


def dataset_augmentations(augmentations: Transform | None, resize: Resize) -> Transform:
    """A train set's transform: the user's augmentations, then the model's resize (anomalib's rule)."""
    if augmentations is None or isinstance(augmentations, Resize):
        return resize
    if isinstance(augmentations, Compose):
        return Compose([*augmentations.transforms, resize])
    return Compose([augmentations, resize])


def build_pre_processor(
    side: int,
    resize_mode: ResizeMode,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> ClipPreProcessor:
    """``crop``: short side to ``side`` + centre crop (original evaluation); ``squash``: ``side x side``.

    Training batches are squashed to ``side x side`` in both modes, as the original trains. ``mean``
    and ``std``: the tower's normalisation (CLIP's for ImageBind, ImageNet's for DINOv2).
    """
    check_choice("resize_mode", resize_mode, typing.get_args(ResizeMode))
    resize = ClipResize(side, crop=resize_mode == "crop")
    normalise = Normalize(mean=mean, std=std)
    return ClipPreProcessor(
        transform=Compose([resize, normalise]),
        train_transform=Compose([ClipResize(side, crop=False), normalise]),
    )
