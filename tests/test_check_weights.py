"""``anomalib-agpt check-weights`` on the reference set: kinds, sizes, fit, modes, protocols and errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from anomalib_agpt.apps import check_weights as cw
from anomalib_agpt.apps.check_weights import describe, main

from .conftest import ANOMALYGPT_DELTA, FIXTURES, IMAGEBIND, PANDAGPT_DELTA

VICUNA = FIXTURES / "vicuna"
FULL_SET = [str(IMAGEBIND), str(ANOMALYGPT_DELTA), str(PANDAGPT_DELTA), str(VICUNA)]


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})


def _run(capsys: pytest.CaptureFixture[str], *paths: str | Path) -> tuple[int, str, str]:
    status = main([str(p) for p in paths])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _line(out: str, start: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(start))


# --------------------------------------------------------------------------------------------
# Each fixture file: kind and numbers, compared with shapes read here
# --------------------------------------------------------------------------------------------
def test_imagebind_sizes() -> None:
    state = _load(IMAGEBIND)
    report = describe(IMAGEBIND)
    assert report.kind == cw.IMAGEBIND, report.error
    assert report.sizes["vision_width"] == state["modality_preprocessors.vision.rgbt_stem.proj.1.weight"].shape[0]
    assert report.sizes["vision_layers"] == _blocks(state, "modality_trunks.vision.blocks.")
    assert report.sizes["text_width"] == state["modality_preprocessors.text.token_embedding.weight"].shape[1]
    assert report.sizes["text_layers"] == _blocks(state, "modality_trunks.text.blocks.")
    assert report.sizes["embed_dim"] == state["modality_heads.vision.2.weight"].shape[0]
    assert report.sizes["vision_width"] != 1280  # a tiny set: the heads remark must say so
    assert any("head counts are not stored" in line for line in report.details)


def test_anomalygpt_delta_sizes() -> None:
    state = _load(ANOMALYGPT_DELTA)
    report = describe(ANOMALYGPT_DELTA)
    assert report.kind == cw.ANOMALYGPT, report.error
    out_dim, in_width = state["image_decoder.fc.0.weight"].shape
    layers = _blocks(state, "image_decoder.fc.")
    assert (report.sizes["decoder_layers"], report.sizes["decoder_in"], report.sizes["decoder_out"]) == (
        layers,
        in_width,
        out_dim,
    )
    assert (report.sizes["base_prompts"], report.sizes["prompt_width"]) == tuple(
        state["prompt_learner.base_prompts"].shape
    )
    assert f"decoder {layers} x Linear({in_width} -> {out_dim})" in report.details[0]
    assert "cannot be told" in report.sizes["protocol"]


def test_pandagpt_delta_sizes() -> None:
    state = _load(PANDAGPT_DELTA)
    report = describe(PANDAGPT_DELTA)
    assert report.kind == cw.PANDAGPT, report.error
    assert (report.sizes["proj_out"], report.sizes["proj_in"]) == tuple(state["llama_proj.weight"].shape)
    lora_a = state["llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    assert (report.sizes["lora_rank"], report.sizes["lora_hidden"]) == tuple(lora_a.shape)
    assert report.sizes["lora_layers"] == _blocks(state, "llama_model.base_model.model.model.layers.")
    assert f"LoRA rank {lora_a.shape[0]} on q/k/v/o" in report.details[0]


def test_llm_folder_sizes() -> None:
    import sentencepiece

    config = json.loads((VICUNA / "config.json").read_text())
    embedding = _load(VICUNA / "pytorch_model.bin")["model.embed_tokens.weight"]
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(VICUNA / "tokenizer.model")).get_piece_size()
    added = len(json.loads((VICUNA / "added_tokens.json").read_text()))
    report = describe(VICUNA)
    assert report.kind == cw.LLM, report.error
    assert report.sizes["architecture"] == config["architectures"][0]
    assert report.sizes["hidden_size"] == config["hidden_size"] == embedding.shape[1]
    assert report.sizes["num_layers"] == config["num_hidden_layers"]
    assert (report.sizes["embedding_rows"], report.sizes["embedding_width"]) == tuple(embedding.shape)
    assert report.sizes["tokenizer_size"] == pieces + added
    assert report.sizes["weight_format"] == "bin"
    assert report.sizes["weight_dtype"] == str(embedding.dtype).removeprefix("torch.")
    assert report.sizes["stop_piece"]


def test_safetensors_llm_folder(tmp_path: Path) -> None:
    from safetensors import safe_open

    from anomalib_agpt.model.presets import LlamaSizes, write_random_llama

    folder = write_random_llama(tmp_path / "llm", LlamaSizes(48, 3, 4, 96, vocab_size=421), VICUNA, seed=0)
    with safe_open(folder / "model.safetensors", framework="pt") as file:
        shape = tuple(file.get_slice("model.embed_tokens.weight").get_shape())
    report = describe(folder)
    assert report.kind == cw.LLM, report.error
    assert (report.sizes["embedding_rows"], report.sizes["embedding_width"]) == shape
    assert (report.sizes["hidden_size"], report.sizes["num_layers"]) == (48, 3)
    assert (report.sizes["weight_format"], report.sizes["weight_dtype"]) == ("safetensors", "float16")
    single = describe(folder / "model.safetensors")
    assert single.kind is None
    assert "pass the folder" in single.error


# --------------------------------------------------------------------------------------------
# The set: printed numbers, fit, modes, protocols
# --------------------------------------------------------------------------------------------
def test_full_set_is_ready_for_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(capsys, *FULL_SET)
    assert status == 0
    assert err == ""
    assert "DOES NOT FIT" not in out
    state = _load(PANDAGPT_DELTA)
    out_features, in_features = state["llama_proj.weight"].shape
    assert f"llama_proj Linear({in_features} -> {out_features})" in out
    assert "hidden size 64, 2 layers" in out
    assert "421 tokens" in out
    assert _line(out, "zero-shot:").split(":", 1)[1].strip().startswith("ready")
    assert "reference images" in _line(out, "few-shot:")
    explain = _line(out, "explain:")
    assert explain.split(":", 1)[1].strip().startswith("ready")
    assert all(Path(p).name in explain for p in FULL_SET)


def test_missing_pieces_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(capsys, IMAGEBIND)
    assert status == 0
    assert "missing AnomalyGPT delta" in _line(out, "zero-shot:")
    explain = _line(out, "explain:")
    assert all(piece in explain for piece in ("AnomalyGPT delta", "PandaGPT delta", "LLM folder"))


def _pandagpt_of_hidden(path: Path, hidden: int) -> Path:
    from anomalib_agpt.model.presets import LlamaSizes, random_pandagpt_delta

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_pandagpt_delta(32, LlamaSizes(hidden, 2, 4, 96, vocab_size=421, lora_rank=4), seed=0), path)
    return path


def test_pair_that_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = _pandagpt_of_hidden(tmp_path / "pandagpt_wide.pt", hidden=96)
    status, out, _ = _run(capsys, IMAGEBIND, ANOMALYGPT_DELTA, wrong, VICUNA)
    assert status == 0  # every file recognised; the set just does not fit
    misfits = [line for line in out.splitlines() if "DOES NOT FIT" in line]
    assert any("pandagpt_wide.pt llama_proj output 96 vs vicuna hidden size 64" in line for line in misfits)
    assert any("LoRA hidden size 96" in line for line in misfits)
    assert "ready" in _line(out, "zero-shot:")
    assert "do not fit" in _line(out, "explain:")


def test_prompt_width_and_vocabulary_misfits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    delta = _load(ANOMALYGPT_DELTA)
    delta["prompt_learner.base_prompts"] = torch.zeros(9, 48, dtype=torch.float16)
    torch.save(delta, tmp_path / "narrow_prompts.pt")
    llm = shutil.copytree(VICUNA, tmp_path / "short_vocab")
    weights = _load(VICUNA / "pytorch_model.bin")
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:-1].clone()
    torch.save(weights, llm / "pytorch_model.bin")
    status, out, _ = _run(capsys, IMAGEBIND, tmp_path / "narrow_prompts.pt", PANDAGPT_DELTA, llm)
    assert status == 0
    assert re.search(r"DOES NOT FIT +narrow_prompts\.pt prompt width 48 vs short_vocab hidden size 64", out)
    assert re.search(r"DOES NOT FIT +short_vocab: tokenizer 421 tokens vs embedding 420 rows", out)
    assert "do not fit" in _line(out, "explain:")


def test_a_fitting_set_among_others_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = _pandagpt_of_hidden(tmp_path / "pandagpt_wide.pt", hidden=96)
    _, out, _ = _run(capsys, *FULL_SET, wrong)
    assert "DOES NOT FIT" in out
    assert (
        _line(out, "explain:")
        .split(":", 1)[1]
        .strip()
        .startswith(f"ready (imagebind.pth + anomalygpt_delta.pt + {PANDAGPT_DELTA.name}")
    )


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("train_mvtec", "trained on MVTec AD: use it for VisA evaluation"),
        ("train_visa", "trained on VisA: use it for MVTec AD evaluation"),
        ("train_supervised", "not for cross-dataset"),
        ("my_delta", "cannot be told"),
    ],
)
def test_protocol_from_the_folder_name(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    folder: str,
    expected: str,
) -> None:
    (tmp_path / folder).mkdir()
    shutil.copy(ANOMALYGPT_DELTA, tmp_path / folder / "pytorch_model.pt")
    for given in (tmp_path / folder / "pytorch_model.pt", tmp_path / folder):  # the file or its folder
        status, out, _ = _run(capsys, given)
        assert status == 0
        assert cw.ANOMALYGPT in out
        assert expected in out.split("Protocol", 1)[1]


# --------------------------------------------------------------------------------------------
# Lightning checkpoints
# --------------------------------------------------------------------------------------------
def test_lightning_checkpoint_of_this_product(tmp_path: Path) -> None:
    checkpoint = {
        "state_dict": {"model.text_features": torch.zeros(2, 32), "model.reference_memory": torch.zeros(4, 256, 64)},
        "hyper_parameters": {"imagebind_checkpoint": Path(IMAGEBIND), "anomalygpt_checkpoint": "gone.pt", "k_shot": 1},
        "anomalygpt_class_name": "bottle",
    }
    torch.save(checkpoint, tmp_path / "model.ckpt")
    report = describe(tmp_path / "model.ckpt")
    assert report.kind == cw.LIGHTNING, report.error
    assert (report.sizes["class_name"], report.sizes["k_shot"]) == ("bottle", 1)
    text = "\n".join(report.details)
    assert f"imagebind_checkpoint={IMAGEBIND} (found)" in text
    assert "anomalygpt_checkpoint=gone.pt (NOT FOUND)" in text

    torch.save({"state_dict": {"backbone.weight": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    other = describe(tmp_path / "other.ckpt")
    assert other.kind is None
    assert "another model" in other.error


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_missing_and_non_weight_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "imagebind_huge.pth"
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not weights\n")
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(0)).byte().numpy())
    status, out, err = _run(capsys, IMAGEBIND, missing, text_file, random_bytes, tmp_path)
    assert status == 2
    errors = err.strip().splitlines()
    assert len(errors) == 4
    assert all(line.startswith("error: ") for line in errors)
    for path, line in zip((missing, text_file, random_bytes, tmp_path), errors, strict=True):
        assert str(path) in line
    assert "not found" in errors[0]
    assert "not a weight file this product reads" in errors[1]
    assert "Traceback" not in out + err
    assert IMAGEBIND.name in out  # the recognised path is still described


def test_other_tensor_files_say_why(tmp_path: Path) -> None:
    torch.save({"backbone.weight": torch.zeros(2)}, tmp_path / "other.pt")
    assert "look like no file the model reads" in describe(tmp_path / "other.pt").error
    torch.save(_load(VICUNA / "pytorch_model.bin"), tmp_path / "pytorch_model.bin")
    assert "pass the LLM folder" in describe(tmp_path / "pytorch_model.bin").error
    assert "not a dict of tensors" in describe(FIXTURES / "expected.pt").error
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text("{}")
    assert "no weights" in describe(tmp_path / "llm").error


def test_help_and_no_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "usage: anomalib-agpt check-weights FILE_OR_FOLDER" in help_text
    assert "explain mode" in help_text
    assert main([]) == 2


def test_relative_paths_are_looked_up_in_the_weights_home(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANOMALIB_AGPT_HOME", str(FIXTURES))
    report = describe("imagebind.pth")
    assert report.kind == cw.IMAGEBIND, report.error
    assert f"found at {IMAGEBIND}" in report.details


def test_lightning_checkpoint_written_before_the_option_groups() -> None:
    """A 0.2 checkpoint (flat hyper-parameters) is read through the same translation as loading uses."""
    report = describe(Path(__file__).parent / "fixtures" / "checkpoints_v0_3" / "trained_explain_1shot.ckpt")
    assert report.kind == cw.LIGHTNING
    assert report.sizes["k_shot"] == 1
    assert "model.decoder" in report.sizes["trained_parts"]
    assert any("weights.imagebind_checkpoint=" in line for line in report.details)
