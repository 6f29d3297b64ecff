"""Bad input gets a clear error that names the file, key or value and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anomalib_agpt.model.references import list_reference_images, load_reference_images
from anomalib_agpt.model.torch_model import AnomalyGPTModel
from anomalib_agpt.weights.checkpoints import CheckpointError

from .conftest import ANOMALYGPT_DELTA, FIXTURES, IMAGEBIND, PANDAGPT_DELTA, make_model


def edited(path: Path, tmp_path: Path, edit: Any) -> Path:
    """A copy of a fixture checkpoint with ``edit(state_dict)`` applied."""
    state = dict(torch.load(path, weights_only=True))
    edit(state)
    target = tmp_path / path.name
    torch.save(state, target)
    return target


def test_no_weights_names_the_options() -> None:
    with pytest.raises(
        ValueError,
        match=r"weights\.imagebind_checkpoint, weights\.anomalygpt_checkpoint not given.*preset='random-small'",
    ):
        make_model()


def test_preset_and_paths_are_exclusive(weights: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"either weights\.preset or weight paths"):
        make_model(**weights, preset="random-small")


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match=r"preset='huge' is unknown; expected one of \['random-small'\]"):
        make_model(preset="huge")  # type: ignore[arg-type]


def test_missing_file_names_option_and_places(tmp_path: Path, weights: dict[str, Any]) -> None:
    with pytest.raises(FileNotFoundError, match=r"imagebind_checkpoint: weight file 'nope.pth' not found \(tried"):
        make_model(**{**weights, "imagebind_checkpoint": "nope.pth"})


def test_weights_home_resolves_relative_paths(
    monkeypatch: pytest.MonkeyPatch,
    weights: dict[str, Any],
) -> None:
    monkeypatch.setenv("ANOMALIB_AGPT_HOME", str(FIXTURES))
    model = make_model(**{**weights, "imagebind_checkpoint": "imagebind.pth"})
    assert model.model.image_size == 224


def test_file_in_wrong_slot_says_what_it_looks_like(weights: dict[str, Any]) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"imagebind_checkpoint: .*pandagpt_delta.pt' is not an ImageBind.*"
        r"it looks like a PandaGPT delta",
    ):
        make_model(**{**weights, "imagebind_checkpoint": str(PANDAGPT_DELTA)})
    with pytest.raises(
        CheckpointError,
        match=r"anomalygpt_checkpoint: .*imagebind.pth' is not an AnomalyGPT delta.*"
        r"it looks like an ImageBind checkpoint",
    ):
        make_model(**{**weights, "anomalygpt_checkpoint": str(IMAGEBIND)})


def test_missing_imagebind_key_is_an_error(tmp_path: Path, heads: dict[str, int]) -> None:
    key = "modality_trunks.vision.blocks.2.mlp.fc1.bias"
    path = edited(IMAGEBIND, tmp_path, lambda s: s.pop(key))
    with pytest.raises(
        CheckpointError,
        match=rf"{path.name}' \(vision tower\) does not match.*missing keys: "
        r"transformer.resblocks.2.mlp.c_fc.bias",
    ):
        AnomalyGPTModel.from_files(path, ANOMALYGPT_DELTA, **heads)


def test_unknown_imagebind_key_is_an_error(tmp_path: Path, heads: dict[str, int]) -> None:
    path = edited(IMAGEBIND, tmp_path, lambda s: s.update({"modality_trunks.vision.blocks.0.ls.gamma": torch.ones(64)}))
    with pytest.raises(CheckpointError, match=r"does not understand: modality_trunks.vision.blocks.0.ls.gamma"):
        AnomalyGPTModel.from_files(path, ANOMALYGPT_DELTA, **heads)


def test_other_modalities_are_ignored(tmp_path: Path, heads: dict[str, int]) -> None:
    path = edited(IMAGEBIND, tmp_path, lambda s: s.update({"modality_trunks.audio.extra": torch.ones(3)}))
    assert AnomalyGPTModel.from_files(path, ANOMALYGPT_DELTA, **heads).image_size == 224


def test_mis_shaped_key_is_an_error(tmp_path: Path, heads: dict[str, int]) -> None:
    key = "modality_trunks.vision.blocks.1.attn.out_proj.bias"
    path = edited(IMAGEBIND, tmp_path, lambda s: s.update({key: torch.zeros(65)}))
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: transformer.resblocks.1.attn.out_proj.bias: "
        r"file \(65,\) vs model \(64,\)",
    ):
        AnomalyGPTModel.from_files(path, ANOMALYGPT_DELTA, **heads)


def test_missing_decoder_key_is_an_error(tmp_path: Path, heads: dict[str, int]) -> None:
    path = edited(ANOMALYGPT_DELTA, tmp_path, lambda s: s.pop("image_decoder.fc.2.bias"))
    with pytest.raises(CheckpointError, match=r"\(image_decoder\) does not match the model: missing keys: fc.2.bias"):
        AnomalyGPTModel.from_files(IMAGEBIND, path, **heads)


def test_unexpected_delta_key_is_an_error(tmp_path: Path, heads: dict[str, int]) -> None:
    path = edited(ANOMALYGPT_DELTA, tmp_path, lambda s: s.update({"llama_proj.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=r"anomalygpt_delta.pt' has unexpected keys: llama_proj.weight"):
        AnomalyGPTModel.from_files(IMAGEBIND, path, **heads)


def test_decoder_from_another_model_is_an_error(tmp_path: Path, heads: dict[str, int]) -> None:
    def widen(state: dict[str, torch.Tensor]) -> None:
        for index in range(4):
            state[f"image_decoder.fc.{index}.weight"] = torch.zeros(32, 128, dtype=torch.float16)

    path = edited(ANOMALYGPT_DELTA, tmp_path, widen)
    with pytest.raises(CheckpointError, match=r"decoder of 4 x Linear\(128 -> 32\).*needs 4 x Linear\(64 -> 32\)"):
        AnomalyGPTModel.from_files(IMAGEBIND, path, **heads)


def test_corrupt_checkpoint_names_the_file(tmp_path: Path, heads: dict[str, int]) -> None:
    path = tmp_path / "imagebind_huge.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"imagebind_checkpoint: cannot read '.*imagebind_huge.pth'"):
        AnomalyGPTModel.from_files(path, ANOMALYGPT_DELTA, **heads)


def test_folder_as_checkpoint(tmp_path: Path, heads: dict[str, int]) -> None:
    with pytest.raises(CheckpointError, match="is a folder; expected a weight file"):
        AnomalyGPTModel.from_files(tmp_path, ANOMALYGPT_DELTA, **heads)


def test_heads_must_divide_width(weights: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="vision_heads=5 does not divide the tower width 64"):
        make_model(**{**weights, "vision_heads": 5})


def test_negative_k_shot(weights: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="k_shot=-1: expected 0"):
        make_model(**weights, k_shot=-1)


def test_empty_reference_folder_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: Any) -> None:
        raise AssertionError("weights were loaded before the reference set was checked")

    monkeypatch.setattr("anomalib_agpt.module.lightning_model.build_torch_model", forbidden)
    with pytest.raises(
        ValueError, match=r"few_shot\.source='.*' holds 0 image\(s\); few_shot\.k_shot=2 needs at least"
    ):
        make_model(preset="random-small", k_shot=2, few_shot_source=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"few_shot.source='.*missing' is not a folder"):
        make_model(preset="random-small", k_shot=1, few_shot_source=tmp_path / "missing")


def test_reference_folder_is_read_in_file_order(tmp_path: Path) -> None:
    for name in ("b.png", "a.png", "c.png", "notes.txt"):
        (tmp_path / name).write_bytes((FIXTURES / "images" / "reference_0_good.png").read_bytes())
    assert [p.name for p in list_reference_images(tmp_path, 2)] == ["a.png", "b.png"]


def test_corrupt_reference_image_names_its_path(tmp_path: Path) -> None:
    broken = tmp_path / "000.png"
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"cannot read image '.*000.png'"):
        load_reference_images([broken], transform=None)


def test_set_references_refuses_empty_batch(weights: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"non-empty \(k, 3, H, W\) batch.*\(0, 3, 224, 224\)"):
        make_model(**weights).model.set_references(torch.zeros(0, 3, 224, 224))


def test_few_shot_without_reference_source(weights: dict[str, Any]) -> None:
    model = make_model(**weights, k_shot=1)
    with pytest.raises(ValueError, match=r"few_shot.k_shot=1 needs normal reference images: pass few_shot.source"):
        model.prepare()


def test_few_shot_source_gives_references(weights: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "ref.png").write_bytes((FIXTURES / "images" / "reference_0_good.png").read_bytes())
    model = make_model(**weights, k_shot=1, few_shot_source=tmp_path)
    model.prepare()
    assert model.model.num_reference_images == 1


def test_checkpoint_of_another_model_is_refused(weights: dict[str, Any]) -> None:
    model = make_model(**weights)
    checkpoint = {"state_dict": {"model.text_features": torch.zeros(2, 32), "model.extra": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match=r"missing \['model.reference_memory'.*unexpected \['model.extra'\]"):
        model.on_load_checkpoint(checkpoint)
