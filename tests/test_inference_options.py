"""Inference options: attention kernel, 8-/4-bit loading, encoder dtype, torch.compile.

The quantisation wiring is checked everywhere with bitsandbytes mocked out; loading through bitsandbytes
itself, and the fp16 encoder, run in the tests marked ``cuda`` (skipped where there is no CUDA device).
"""

from __future__ import annotations

import copy
import importlib.util
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.explanation import llm_head as llm_head_module
from anomalib_agpt.explanation.llm_loading import bitsandbytes_config, load_llm

from .conftest import FIXTURES, PANDAGPT_DELTA, make_model

VICUNA = FIXTURES / "vicuna"
QUERY = "query_1_gray_scratch.png"


def explainer(weights: dict[str, Any], **options: Any) -> AnomalyGPT:
    """The reference set's full model (fp32, greedy, 16 new tokens as the fixtures were made)."""
    settings = {"llm": str(VICUNA), "pandagpt_checkpoint": str(PANDAGPT_DELTA), "explain": True, "llm_dtype": "fp32"}
    return make_model(**weights, class_name="bottle", max_new_tokens=16, **settings | options).eval()


@pytest.fixture
def pretend_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA 'available' and bitsandbytes 'installed', for the checks only."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: object() if name == "bitsandbytes" else find_spec(name, *args),
    )


# --------------------------------------------------------------------------------------------
# Option values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("attn_implementation", "flash", "'sdpa', 'eager'"),
        ("llm_quantization", "2bit", "None, '8bit', '4bit'"),
        ("encoder_dtype", "fp8", "'fp32', 'fp16', 'bf16', 'auto'"),
    ],
)
def test_unknown_option_values_are_refused(weights: dict[str, Any], option: str, value: str, allowed: str) -> None:
    with pytest.raises(ValueError, match=f"{option}='{value}': expected one of {allowed}."):
        make_model(**weights, **{option: value})


# --------------------------------------------------------------------------------------------
# Attention implementation
# --------------------------------------------------------------------------------------------
def test_sdpa_and_eager_give_the_same_answer(weights: dict[str, Any], expected: dict[str, Any]) -> None:
    reference = expected["queries"][QUERY]
    for attention in ("sdpa", "eager"):
        model = explainer(weights, attn_implementation=attention)
        assert model.model.explain(reference["pixel_values"], expected["question"]) == [
            reference["zero_shot_text_original_rule"]
        ]
        assert model.model.llm_head.llm.config._attn_implementation == attention


def test_streamed_llm_takes_the_attention_implementation(tmp_path: Path) -> None:
    """``from_config`` defaults to eager, so the streaming loader must pass the choice on."""
    from anomalib_agpt.model.presets import LlamaSizes, write_random_llama

    sizes = LlamaSizes(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96, vocab_size=421)
    folder = write_random_llama(tmp_path / "llm", sizes, VICUNA, seed=0)
    ids = torch.randint(0, 421, (2, 12))
    logits = {}
    for attention in ("sdpa", "eager"):
        llm = load_llm(folder, torch.float32, attention)
        assert llm.config._attn_implementation == attention
        logits[attention] = llm(input_ids=ids).logits
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 8-/4-bit loading: refused without CUDA or bitsandbytes; the from_pretrained call, mocked; the
# real thing on CUDA
# --------------------------------------------------------------------------------------------
def test_quantization_without_cuda_or_bitsandbytes_is_refused_before_loading(
    weights: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = weights | {"imagebind_checkpoint": "nowhere/imagebind.pth"}  # nothing may be read first
    with pytest.raises(RuntimeError, match=r"llm_quantization='8bit' .* needs a CUDA GPU \(none is available\)"):
        make_model(**missing, llm=str(VICUNA), llm_quantization="8bit")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else find_spec(name, *args),
    )
    with pytest.raises(RuntimeError, match=r"'4bit' .* needs the bitsandbytes package \(pip install 'anomalib-agpt\["):
        make_model(**missing, llm=str(VICUNA), llm_quantization="4bit")


@pytest.mark.usefixtures("pretend_bitsandbytes")
def test_quantization_needs_the_model_on_cuda(weights: dict[str, Any]) -> None:
    model = explainer(weights, llm_quantization="8bit")
    with pytest.raises(RuntimeError, match=r"needs the model on a CUDA device \(it is on cpu"):
        model.model.ensure_llm_head()


def test_quantization_keeps_the_lora_unmerged(weights: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="merge_lora=True with llm_quantization='4bit'"):
        explainer(weights, llm_quantization="4bit", merge_lora=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bitsandbytes_config(dtype: torch.dtype) -> None:
    eight = bitsandbytes_config("8bit", dtype)
    assert eight.load_in_8bit
    assert not eight.load_in_4bit
    four = bitsandbytes_config("4bit", dtype)
    assert four.load_in_4bit
    assert not four.load_in_8bit
    assert four.bnb_4bit_compute_dtype == dtype
    assert four.bnb_4bit_quant_type == "nf4"


def recording_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``from_pretrained`` that records its arguments and returns the reference LLM, unquantised."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(VICUNA, dtype=torch.float32)
    calls: list[dict[str, Any]] = []

    def fake(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, list]]:
        calls.append({"args": args, **kwargs})
        return llm, {"missing_keys": [], "mismatched_keys": []}

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    return calls


@pytest.mark.usefixtures("pretend_bitsandbytes")
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_loading_goes_through_from_pretrained(monkeypatch: pytest.MonkeyPatch, quantization: str) -> None:
    calls = recording_from_pretrained(monkeypatch)
    load_llm(VICUNA, torch.bfloat16, "eager", quantization, torch.device("cuda", 1))
    (call,) = calls
    config = call["quantization_config"]
    assert config.load_in_8bit == (quantization == "8bit")
    assert config.load_in_4bit == (quantization == "4bit")
    if quantization == "4bit":
        assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert call["device_map"] == {"": 1}
    assert call["dtype"] == torch.bfloat16
    assert call["attn_implementation"] == "eager"


def test_quantized_head_wiring_passes_the_config_checks_the_device_and_keeps_the_lora_unmerged(
    weights: dict[str, Any],
    expected: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The head's quantised path with bitsandbytes mocked out (nothing here is quantised).

    The 4-bit config reaches ``from_pretrained``; the support check is asked about the model's device
    (on CPU it refuses, see ``test_quantization_needs_the_model_on_cuda``); the PandaGPT LoRA is put on
    the returned LLM unmerged and still applies (the mock returns the unquantised reference LLM, so the
    answer is the reference's).
    """
    checked: list[tuple[str, torch.device | None]] = []
    monkeypatch.setattr(llm_head_module, "check_quantization_support", lambda q, d=None: checked.append((q, d)))
    monkeypatch.setattr("anomalib_agpt.module.building.check_quantization_support", lambda q, d=None: None)
    monkeypatch.setattr("anomalib_agpt.explanation.llm_loading.check_quantization_support", lambda q, d=None: None)
    calls = recording_from_pretrained(monkeypatch)
    model = explainer(weights, llm_quantization="4bit")
    reference = expected["queries"][QUERY]
    assert model.model.explain(reference["pixel_values"], expected["question"]) == [
        reference["zero_shot_text_original_rule"]
    ]
    (call,) = calls
    assert call["quantization_config"].load_in_4bit
    assert checked[0] == ("4bit", torch.device("cpu"))
    from peft.tuners.lora import LoraLayer

    lora_layers = [m for m in model.model.llm_head.llm.modules() if isinstance(m, LoraLayer)]
    assert lora_layers
    assert not any(layer.merged for layer in lora_layers)


# Relative distance ||logits - reference|| / ||reference|| of the last position's logits. Rounding the
# weights of this tiny random LLM moves them by about 0.02 (int8, per row) and 0.3 (NF4, per block of 64);
# losing the PandaGPT LoRA moves them by about 0.9, and a broken quantised layer further still.
QUANTIZED_LOGIT_BOUNDS = {"8bit": 0.1, "4bit": 0.5}


@pytest.mark.cuda
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_llm_on_cuda_gives_the_reference_logits(
    weights: dict[str, Any], expected: dict[str, Any], quantization: str
) -> None:
    """bitsandbytes for real: quantised layers, the LoRA on top unmerged, logits near the original's."""
    bnb = pytest.importorskip("bitsandbytes", reason="needs bitsandbytes (pip install 'anomalib-agpt[quant]')")
    from peft.tuners.lora import LoraLayer

    model = explainer(weights, llm_quantization=quantization, llm_dtype="fp16").to("cuda")
    head = model.model.ensure_llm_head()
    quantized = bnb.nn.Linear8bitLt if quantization == "8bit" else bnb.nn.Linear4bit
    assert sum(isinstance(module, quantized) for module in head.llm.modules()) >= 4 * 2  # q, k, v, o of 2 layers
    lora_layers = [m for m in head.llm.modules() if isinstance(m, LoraLayer)]
    assert lora_layers
    assert not any(layer.merged for layer in lora_layers)
    reference = expected["queries"][QUERY]
    pixels = reference["pixel_values"].to("cuda")
    with torch.no_grad():
        inputs_embeds, attention_mask = model.model.build_llm_inputs(pixels, expected["question"])
        logits = head.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits[:, -1].float().cpu()
    theirs = reference["zero_shot_logits_last"]
    assert torch.isfinite(logits).all()
    assert (logits - theirs).norm() / theirs.norm() < QUANTIZED_LOGIT_BOUNDS[quantization]
    (answer,) = model.model.explain(pixels)
    assert isinstance(answer, str)


# --------------------------------------------------------------------------------------------
# Encoder dtype
# --------------------------------------------------------------------------------------------
# Maps of a half-precision encoder against fp32, on probabilities in [0, 1]. bf16 keeps 8 significant
# bits (fp16: 11), so the tokens, and in zero-shot the text features too, carry ~0.4% rounding; the
# bounds leave room for that and fail when a tower, the features or the maps stay in the wrong dtype
# or are never cast back (whole parts of the map then move by tenths).
ENCODER_MAX_BOUND = 3e-2
ENCODER_MEAN_BOUND = 1e-2


def test_bf16_encoder_gives_float32_maps_close_to_fp32(weights: dict[str, Any], expected: dict[str, Any]) -> None:
    fp32 = make_model(**weights, class_name="bottle").eval()
    bf16 = make_model(**weights, class_name="bottle", encoder_dtype="bf16").eval()
    images = torch.cat([expected["queries"][q]["pixel_values"] for q in expected["queries"]])
    for references in (False, True):  # zero-shot, then few-shot (the memory is float32 too)
        if references:
            fp32.model.set_references(expected["reference_pixel_values"])
            bf16.model.set_references(expected["reference_pixel_values"])
            assert bf16.model.reference_memory.dtype == torch.float32
        ours, theirs = bf16.model(images), fp32.model(images)
        assert ours.anomaly_map.dtype == ours.pred_score.dtype == torch.float32
        difference = (ours.anomaly_map - theirs.anomaly_map).abs()
        assert difference.max() < ENCODER_MAX_BOUND
        assert difference.mean() < ENCODER_MEAN_BOUND
    assert bf16.model.vision_encoder.visual.conv1.weight.dtype == torch.bfloat16
    assert bf16.model.text_encoder.text.positional_embedding.dtype == torch.bfloat16
    assert bf16.model.text_features.dtype == torch.float32


def test_auto_encoder_dtype_is_fp32_on_cpu(weights: dict[str, Any], expected: dict[str, Any]) -> None:
    from anomalib_agpt.model.torch_model import resolve_encoder_dtype

    assert resolve_encoder_dtype("auto", torch.device("cuda")) == torch.float16
    images = expected["queries"][QUERY]["pixel_values"]
    auto = make_model(**weights, class_name="bottle", encoder_dtype="auto").eval()
    assert torch.equal(
        auto.model(images).anomaly_map, make_model(**weights, class_name="bottle").model(images).anomaly_map
    )
    assert auto.model.vision_encoder.visual.conv1.weight.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize("encoder_dtype", ["fp16", "auto"])
def test_fp16_encoder_on_cuda_gives_float32_maps_close_to_fp32(
    weights: dict[str, Any], expected: dict[str, Any], encoder_dtype: str
) -> None:
    """``fp16`` (and ``auto``, which is fp16 on CUDA) towers on the GPU: float32 maps within the bounds of fp32."""
    fp32 = make_model(**weights, class_name="bottle").eval().to("cuda")
    half = make_model(**weights, class_name="bottle", encoder_dtype=encoder_dtype).eval().to("cuda")
    images = torch.cat([expected["queries"][q]["pixel_values"] for q in expected["queries"]]).to("cuda")
    for references in (False, True):  # zero-shot, then few-shot
        if references:
            fp32.model.set_references(expected["reference_pixel_values"].to("cuda"))
            half.model.set_references(expected["reference_pixel_values"].to("cuda"))
            assert half.model.reference_memory.dtype == torch.float32
        with torch.no_grad():
            ours, theirs = half.model(images), fp32.model(images)
        assert ours.anomaly_map.dtype == ours.pred_score.dtype == torch.float32
        difference = (ours.anomaly_map - theirs.anomaly_map).abs()
        assert difference.max() < ENCODER_MAX_BOUND
        assert difference.mean() < ENCODER_MEAN_BOUND
    assert half.model.vision_encoder.visual.conv1.weight.dtype == torch.float16
    assert half.model.text_features.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# torch.compile of the encoder. Inductor takes ~25 s to compile even the tiny tower on a 2-core
# CPU, so torch.compile is replaced by a recorder around Dynamo with the 'eager' backend: the
# forward is captured as a graph (what compiling needs) but no kernels are generated.
# --------------------------------------------------------------------------------------------
@pytest.fixture
def compile_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    real = torch.compile
    counts = {"compiled": 0, "calls": 0}

    def recorder(function: Callable, **kwargs: Any) -> Callable:
        counts["compiled"] += 1
        captured = real(function, backend="eager")

        def call(*args: Any) -> Any:
            counts["calls"] += 1
            return captured(*args)

        return call

    monkeypatch.setattr(torch, "compile", recorder)
    return counts


def test_compiled_encoder_gives_the_eager_map(
    weights: dict[str, Any],
    expected: dict[str, Any],
    compile_calls: dict[str, int],
) -> None:
    eager = make_model(**weights, class_name="bottle").eval()
    compiled = make_model(**weights, class_name="bottle", compile_encoder=True).eval()
    assert compile_calls["compiled"] == 0  # lazily, on the first batch
    images = torch.cat([expected["queries"][q]["pixel_values"] for q in expected["queries"]])
    for _ in range(2):
        difference = compiled.model(images).anomaly_map - eager.model(images).anomaly_map
        assert difference.abs().max() < 1e-5
    assert compile_calls == {"compiled": 1, "calls": 2}
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_compiled_encoder_exports_and_pickles_eagerly(
    weights: dict[str, Any],
    expected: dict[str, Any],
    compile_calls: dict[str, int],
    tmp_path: Path,
) -> None:
    model = make_model(**weights, class_name="bottle", compile_encoder=True, resize_mode="squash").eval()
    images = expected["queries"][QUERY]["pixel_values"]
    before = model.model(images).anomaly_map
    assert compile_calls["calls"] == 1
    torch_path = model.to_torch(tmp_path)
    onnx_path = model.to_onnx(tmp_path)
    copied = copy.deepcopy(model.model)
    assert compile_calls["calls"] == 1  # export and pickling ran the plain module
    restored = torch.load(torch_path, weights_only=False)["model"]
    torch.testing.assert_close(restored.model(images).anomaly_map, before, atol=1e-5, rtol=0)
    assert copied._compiled_encoder is None
    assert onnx_path.stat().st_size > 0
    assert pickle.loads(pickle.dumps(copied)).compile_encoder


@pytest.mark.parametrize(
    ("decoding", "received"),
    [
        ({"do_sample": True, "top_p": 0.3, "temperature": 0.7}, {"do_sample": True, "top_p": 0.3, "temperature": 0.7}),
        ({"do_sample": False, "top_p": 0.3, "temperature": 0.7}, {"do_sample": False}),
    ],
)
def test_sampling_options_reach_generate(
    weights: dict[str, Any],
    expected: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    decoding: dict[str, Any],
    received: dict[str, Any],
) -> None:
    """What the LLM's ``generate`` receives: the options given (greedy drops top_p/temperature)."""
    model = explainer(weights, **decoding)
    head = model.model.ensure_llm_head()
    calls: list[dict[str, Any]] = []
    generate = head.llm.generate

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return generate(*args, **kwargs)

    monkeypatch.setattr(head.llm, "generate", recording)
    model.model.explain(expected["queries"][QUERY]["pixel_values"], expected["question"])
    assert len(calls) == 1
    assert calls[0]["max_new_tokens"] == 16
    assert {key: calls[0][key] for key in ("do_sample", "top_p", "temperature") if key in calls[0]} == received
