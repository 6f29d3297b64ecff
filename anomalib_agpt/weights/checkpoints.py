"""Read, recognise, validate and convert the original AnomalyGPT weight files.

The original loads its deltas with ``strict=False``, so a renamed or missing key silently leaves
random weights behind (the top cause of its users' broken answers). Everything here is strict: a
missing, unexpected or mis-shaped key is an error that names the file, the keys and what was
expected, and a file given in the wrong slot says which file it looks like.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath

import torch
from torch import nn

from anomalib_agpt.errors import CheckpointError, MissingFileError

WEIGHTS_HOME_ENV = "ANOMALIB_AGPT_HOME"
"""Environment variable naming a folder where relative weight paths are looked up."""

NUM_TAPS = 4
"""ImageBind blocks AnomalyGPT taps, and so decoder layers (``image_decoder.fc.0..3``)."""

_MAX_LISTED_KEYS = 12


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def weights_home() -> Path:
    """Folder where relative weight paths are looked up (``$ANOMALIB_AGPT_HOME`` or a cache)."""
    env = os.environ.get(WEIGHTS_HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anomalib_agpt"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB blocks (cache keys: uploads, converted backbones)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CONVERTED_MARK = "converted_from.json"
"""Written last into a converted folder: a folder without it is never trusted."""


def converted_once(path: Path, kind: str, convert: Callable[[Path, Path], object], cache: Path | None = None) -> Path:
    """The folder ``convert(path, folder)`` writes, made once per content of ``path`` and reused after.

    Under ``cache`` (default ``weights_home() / kind``), keyed by the file's SHA-256; written in a staging
    folder and renamed, so a reader (another process too) sees no folder or a whole one.
    """
    digest = file_digest(path)
    folder = (cache or weights_home() / kind) / f"{path.stem}-{digest[:16]}"
    if (folder / CONVERTED_MARK).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        convert(path, staging)
        (staging / CONVERTED_MARK).write_text(json.dumps({"file": str(path), "sha256": digest}) + "\n")
        if folder.exists() and not (folder / CONVERTED_MARK).is_file():
            shutil.rmtree(folder)  # not this function's work: a folder without the mark is never trusted
        try:
            staging.rename(folder)  # a reader sees no folder or a whole one
        except OSError:  # another process renamed its own first (a non-empty target): its folder is as good
            if not (folder / CONVERTED_MARK).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def resolve_weight_path(value: str | Path, option: str) -> Path:
    """Return an existing local path for a weight option, or fail naming every place tried.

    A relative path is tried against the working directory, then against :func:`weights_home`.
    Nothing is ever downloaded.
    """
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [path, weights_home() / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    msg = (
        f"{option}: weight file '{value}' not found (tried {tried}). Pass a local path; "
        f"relative paths are also looked up in ${WEIGHTS_HOME_ENV} (now {weights_home()}). "
        "Nothing is downloaded."
    )
    raise MissingFileError(msg)


def load_state_dict_file(path: str | Path, option: str) -> dict[str, torch.Tensor]:
    """Load a flat tensor dict memory-mapped (``weights_only=True``), without a second copy."""
    path = resolve_weight_path(path, option)
    if path.is_dir():
        msg = f"{option}: '{path}' is a folder; expected a weight file (.pth / .pt)."
        raise CheckpointError(msg)
    try:
        obj = read_torch_file(path)
    except CheckpointError as error:
        msg = f"{option}: cannot read '{path}' as a PyTorch weight file: {error}"
        raise CheckpointError(msg) from error
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = "a Lightning checkpoint" if isinstance(obj, Mapping) and "state_dict" in obj else None
        msg = f"{option}: '{path}' is not a flat dict of tensors" + (f"; it looks like {kind}" if kind else "")
        raise CheckpointError(msg)
    return {k: v.detach() if isinstance(v, nn.Parameter) else v for k, v in obj.items()}


PATH_GLOBALS = (PosixPath, WindowsPath, PurePosixPath, PureWindowsPath)
"""The path classes Lightning writes into a checkpoint's hyper-parameters (read when asked for)."""


def read_torch_file(path: Path, allowed_globals: Sequence[type] = ()) -> object:
    """What ``torch.save`` wrote, read with ``weights_only`` and memory-mapped (a legacy pickle whole).

    ``allowed_globals``: classes the file may hold besides tensors and containers (e.g. :data:`PATH_GLOBALS`).

    Raises:
        CheckpointError: the file is not a PyTorch file, or holds other Python objects; the message is the reason.

    """
    with path.open("rb") as file:
        legacy = file.read(1) == b"\x80"  # a pickle, as torch.save wrote before its zip format
    if not legacy and not zipfile.is_zipfile(path):
        msg = "not a PyTorch file (neither a torch.save zip archive nor a legacy pickle)"
        raise CheckpointError(msg)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as error:
        allowed = {f"{kind.__module__}.{kind.__qualname__}" for kind in allowed_globals}
        unsafe = [] if legacy else sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
        if unsafe:
            msg = f"it holds Python objects that are not read without running their code ({', '.join(unsafe)})"
            raise CheckpointError(msg) from error
        raise CheckpointError(first_line(error)) from error
    except Exception as error:
        raise CheckpointError(first_line(error)) from error


def first_line(error: BaseException) -> str:
    """``Kind: first line of the message``: an underlying error, short enough for one line of a report."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------
IMAGEBIND = "an ImageBind checkpoint (imagebind_huge.pth: modality_trunks.vision.*, ...)"
PANDAGPT = "a PandaGPT delta (pytorch_model.pt: llama_proj.*, llama_model.*lora_*)"
ANOMALYGPT = "an AnomalyGPT delta (pytorch_model.pt: image_decoder.fc.*, prompt_learner.*)"


def identify(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Say which original weight file a state dict looks like, or ``None``."""
    keys = list(state_dict)
    if any(k.startswith("modality_trunks.") for k in keys):
        return IMAGEBIND
    if any(k.startswith(("image_decoder.", "prompt_learner.")) for k in keys):
        return ANOMALYGPT
    if any(k.startswith(("llama_proj.", "llama_model.")) for k in keys):
        return PANDAGPT
    return None


def expect_kind(state_dict: Mapping[str, torch.Tensor], expected: str, path: Path | str, option: str) -> None:
    """Fail when a file was passed in the wrong slot, saying what it looks like."""
    found = identify(state_dict)
    if found == expected:
        return
    looks = f"it looks like {found}" if found else f"its keys look like none of them ({_keys(state_dict)})"
    msg = f"{option}: '{path}' is not {expected}; {looks}."
    raise CheckpointError(msg)


def _keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED_KEYS else "")


# --------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------
def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module``, failing on any missing, unexpected or mis-shaped key.

    Tensors are assigned, not copied, so memory-mapped weights stay memory-mapped; each is cast
    to the dtype of the module's tensor (fp16 deltas into fp32 modules, as the original does).
    """
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_keys(unexpected)}")
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched[:_MAX_LISTED_KEYS]))
    if problems:
        msg = f"{source} does not match the model: " + " | ".join(problems)
        raise CheckpointError(msg)
    cast = {k: v.to(expected[k].dtype) if expected[k].is_floating_point() else v for k, v in state_dict.items()}
    module.load_state_dict(cast, strict=True, assign=True)


def load_strict_subset(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load some of ``module``'s tensors (e.g. its trained parts); unknown or mis-shaped keys are errors."""
    expected = module.state_dict()
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [k for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
    if unexpected or mismatched:
        msg = f"{source} does not match the model: unexpected {_keys(unexpected)}; mis-shaped {_keys(mismatched)}"
        raise CheckpointError(msg)
    module.load_state_dict(dict(state_dict), strict=False)


# --------------------------------------------------------------------------------------------
# ImageBind -> open_clip
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageBindSizes:
    """Architecture sizes of the vision and text towers, read from checkpoint shapes."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_mlp_ratio: float
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    text_mlp_ratio: float
    vocab_size: int
    context_length: int


_VISION = "modality_trunks.vision.blocks."
_TEXT = "modality_trunks.text.blocks."


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def imagebind_sizes(state_dict: Mapping[str, torch.Tensor], path: Path | str) -> ImageBindSizes:
    """Read every architecture size of the two towers from tensor shapes."""
    try:
        stem = state_dict["modality_preprocessors.vision.rgbt_stem.proj.1.weight"]
        pos = state_dict["modality_preprocessors.vision.pos_embedding_helper.pos_embed"]
        vision_proj = state_dict["modality_heads.vision.2.weight"]
        vision_fc1 = state_dict[_VISION + "0.mlp.fc1.weight"]
        token_embedding = state_dict["modality_preprocessors.text.token_embedding.weight"]
        text_pos = state_dict["modality_preprocessors.text.pos_embed"]
        text_fc1 = state_dict[_TEXT + "0.mlp.fc1.weight"]
    except KeyError as error:
        msg = f"ImageBind checkpoint '{path}' lacks key {error}, needed to read the model sizes."
        raise CheckpointError(msg) from error
    grid = round((pos.shape[1] - 1) ** 0.5)
    if grid * grid != pos.shape[1] - 1:
        msg = f"ImageBind checkpoint '{path}': position embedding of {pos.shape[1]} rows is not 1 + a square grid."
        raise CheckpointError(msg)
    patch = stem.shape[-1]
    return ImageBindSizes(
        embed_dim=vision_proj.shape[0],
        vision_width=stem.shape[0],
        vision_layers=_count_blocks(state_dict, _VISION),
        vision_mlp_ratio=vision_fc1.shape[0] / stem.shape[0],
        patch_size=patch,
        image_size=grid * patch,
        text_width=token_embedding.shape[1],
        text_layers=_count_blocks(state_dict, _TEXT),
        text_mlp_ratio=text_fc1.shape[0] / token_embedding.shape[1],
        vocab_size=token_embedding.shape[0],
        context_length=text_pos.shape[1],
    )


_BLOCK_RENAMES = {
    "norm_1": "ln_1",
    "norm_2": "ln_2",
    "attn.in_proj_weight": "attn.in_proj_weight",
    "attn.in_proj_bias": "attn.in_proj_bias",
    "attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_BLOCK_KEY = re.compile(r"^(?P<index>\d+)\.(?P<rest>.+)$")


# ImageBind entries that open_clip builds itself or AnomalyGPT does not use.
_IGNORED_KEYS = {
    "modality_preprocessors.text.mask",  # causal mask: open_clip builds the same one
}


def _convert_block(key: str, prefix: str) -> str | None:
    """Rename one transformer-block key (``blocks.N.norm_1.weight`` -> ``resblocks.N.ln_1.weight``)."""
    match = _BLOCK_KEY.match(key[len(prefix) :])
    if match is None:
        return None
    rest = match["rest"]
    for source, target in _BLOCK_RENAMES.items():
        if rest == source or rest.startswith(source + "."):
            return f"transformer.resblocks.{match['index']}.{target}{rest[len(source) :]}"
    return None


def convert_imagebind(
    state_dict: Mapping[str, torch.Tensor],
    path: Path | str,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Split an ImageBind state dict into open_clip vision and text tower dicts.

    Returns ``(vision, text, text_logit_scale)``. Other modalities are dropped; a vision or text
    key that no rule understands is an error, so nothing is silently lost.
    """
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    log_logit_scale = None
    direct = {
        "modality_preprocessors.vision.cls_token": (vision, "class_embedding", lambda t: t.reshape(-1)),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (
            vision,
            "positional_embedding",
            lambda t: t.reshape(t.shape[-2], t.shape[-1]),
        ),
        # Conv3d over two identical frames == Conv2d with the time slices summed.
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": (vision, "conv1.weight", lambda t: t.sum(dim=2)),
        "modality_trunks.vision.pre_transformer_layer.0.weight": (vision, "ln_pre.weight", None),
        "modality_trunks.vision.pre_transformer_layer.0.bias": (vision, "ln_pre.bias", None),
        "modality_heads.vision.0.weight": (vision, "ln_post.weight", None),
        "modality_heads.vision.0.bias": (vision, "ln_post.bias", None),
        "modality_heads.vision.2.weight": (vision, "proj", lambda t: t.t().contiguous()),
        "modality_preprocessors.text.token_embedding.weight": (text, "token_embedding.weight", None),
        "modality_preprocessors.text.pos_embed": (
            text,
            "positional_embedding",
            lambda t: t.reshape(t.shape[-2], t.shape[-1]),
        ),
        "modality_heads.text.proj.0.weight": (text, "ln_final.weight", None),
        "modality_heads.text.proj.0.bias": (text, "ln_final.bias", None),
        "modality_heads.text.proj.1.weight": (text, "text_projection", lambda t: t.t().contiguous()),
    }
    for key, tensor in state_dict.items():
        if key.split(".")[1:2] not in (["vision"], ["text"]) or key in _IGNORED_KEYS:
            continue  # audio, depth, thermal, imu: not used by AnomalyGPT
            continue
        if key == "modality_postprocessors.text.1.log_logit_scale":
            log_logit_scale = tensor
        elif key in direct:
            target, name, transform = direct[key]
            target[name] = transform(tensor) if transform else tensor
        elif key.startswith(_VISION) and (name := _convert_block(key, _VISION)):
            vision[name] = tensor
        elif key.startswith(_TEXT) and (name := _convert_block(key, _TEXT)):
            text[name] = tensor
        else:
            unknown.append(key)
    if unknown:
        msg = f"ImageBind checkpoint '{path}' has vision/text keys this loader does not understand: {_keys(unknown)}"
        raise CheckpointError(msg)
    if log_logit_scale is None:
        msg = f"ImageBind checkpoint '{path}' lacks modality_postprocessors.text.1.log_logit_scale."
        raise CheckpointError(msg)
    return vision, text, log_logit_scale.exp().clamp(max=100.0)


# --------------------------------------------------------------------------------------------
# AnomalyGPT delta
# --------------------------------------------------------------------------------------------
DECODER_PREFIX = "image_decoder."
PROMPT_LEARNER_PREFIX = "prompt_learner."


def split_anomalygpt_delta(
    state_dict: Mapping[str, torch.Tensor],
    path: Path | str,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an AnomalyGPT delta into the decoder and prompt-learner dicts (prefixes removed)."""
    decoder = {k[len(DECODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(DECODER_PREFIX)}
    prompt = {k[len(PROMPT_LEARNER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PROMPT_LEARNER_PREFIX)}
    unknown = [k for k in state_dict if not k.startswith((DECODER_PREFIX, PROMPT_LEARNER_PREFIX))]
    if unknown:
        msg = f"AnomalyGPT delta '{path}' has unexpected keys: {_keys(unknown)}"
        raise CheckpointError(msg)
    if not decoder:
        msg = f"AnomalyGPT delta '{path}' has no image_decoder.* keys."
        raise CheckpointError(msg)
    return decoder, prompt


def decoder_sizes(decoder: Mapping[str, torch.Tensor], path: Path | str) -> tuple[int, int, int]:
    """Return ``(num_layers, in_width, out_dim)`` of the decoder from its weight shapes."""
    weights = [k for k in decoder if re.fullmatch(r"fc\.\d+\.weight", k)]
    if not weights:
        msg = f"AnomalyGPT delta '{path}' has no image_decoder.fc.N.weight keys."
        raise CheckpointError(msg)
    out_dim, in_width = decoder[weights[0]].shape
    return len(weights), in_width, out_dim
