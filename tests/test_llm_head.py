"""The explanation head against the original's outputs, batching, chat, and its bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib import LearningType

from anomalib_agpt import AnomalyGPT
from anomalib_agpt.explanation.conversation import default_question, is_anomalous_answer, multi_turn_prompt
from anomalib_agpt.explanation.llm_head import MAX_TRAINING_TEXT_TOKENS
from anomalib_agpt.module.chat import AnomalyGPTChat
from anomalib_agpt.weights.checkpoints import CheckpointError

from .conftest import FIXTURES, PANDAGPT_DELTA, make_model

QUERIES = ["query_0_rgb_blob.png", "query_1_gray_scratch.png", "query_2_rgba_good.png"]
VICUNA = FIXTURES / "vicuna"
TOL_EMBEDS = 1e-5
# LLM logits, as the reference set recommends: float32 noise through two layers stays far below it, while a
# wrong rotary convention, LoRA scaling or embedding layout moves logits by whole units.
TOL_LOGITS = 1e-4


@pytest.fixture(scope="module")
def explainer(weights: dict[str, Any]) -> AnomalyGPT:
    """The reference set's full model (fp32, greedy, 16 new tokens as the fixtures were made)."""
    model = make_model(
        **weights,
        class_name="bottle",
        llm=str(VICUNA),
        pandagpt_checkpoint=str(PANDAGPT_DELTA),
        explain=True,
        llm_dtype="fp32",
        max_new_tokens=16,
    ).eval()
    model.prepare(load_llm=True)
    return model


def set_mode(model: AnomalyGPT, mode: str, expected: dict[str, Any]) -> None:
    if mode == "few_shot":
        model.model.set_references(expected["reference_pixel_values"])
    else:
        model.model.reference_memory = model.model.reference_memory[:, :0]


def test_default_question_is_the_projects_own_and_ends_with_the_anomaly_question(expected: dict[str, Any]) -> None:
    """The fixture's question is the original's; the default one is the project's, so tests pass the fixture's."""
    assert default_question("bottle") != expected["question"]
    assert default_question("bottle").endswith(" Is there any anomaly in the image?")
    assert "metal nut" in default_question("metal_nut")
    assert default_question("metal_nut") == default_question("metal nut")
    assert default_question("widget").endswith(" Is there any anomaly in the image?")


def test_tokenizer_segments_match(explainer: AnomalyGPT, expected: dict[str, Any]) -> None:
    head = explainer.model.llm_head
    segments, ids = expected["prompt_segments"], expected["token_ids"]
    for name in ("before", "middle", "after"):
        assert head.encode(segments[name]) == ids[name].tolist()
    assert head.stop_token_id == expected["stop_token_id"]


@pytest.mark.parametrize("mode", ["zero_shot", "few_shot"])
@pytest.mark.parametrize("query", QUERIES)
def test_llm_inputs_logits_and_answer_match(
    explainer: AnomalyGPT,
    expected: dict[str, Any],
    query: str,
    mode: str,
) -> None:
    reference = expected["queries"][query]
    set_mode(explainer, mode, expected)
    torch_model, head = explainer.model, explainer.model.llm_head
    features = torch_model.vision_encoder(reference["pixel_values"])
    anomaly_map = torch_model.anomaly_map(features, (224, 224))
    prompts = head.prompt_learner(anomaly_map)
    assert (prompts - reference[f"{mode}_prompts"]).abs().max() < TOL_EMBEDS
    inputs_embeds, attention_mask = torch_model.build_llm_inputs(reference["pixel_values"], expected["question"])
    assert inputs_embeds.shape == reference[f"{mode}_inputs_embeds"].shape
    assert (inputs_embeds - reference[f"{mode}_inputs_embeds"]).abs().max() < TOL_EMBEDS
    assert attention_mask.all()
    logits = head.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits[:, -1]
    assert (logits - reference[f"{mode}_logits_last"]).abs().max() < TOL_LOGITS
    ids = head.generate_ids(inputs_embeds, attention_mask, max_new_tokens=16)[0]
    assert ids == reference[f"{mode}_generated_ids"].tolist()
    answer = torch_model.explain(reference["pixel_values"], expected["question"])
    assert answer == [reference[f"{mode}_text_original_rule"]]
    assert is_anomalous_answer(answer[0]) == reference[f"{mode}_yes_in_text"]


def test_batched_answers_equal_one_by_one(explainer: AnomalyGPT, expected: dict[str, Any]) -> None:
    """One generate call for a batch (left padding, KV cache) gives each image's own answer."""
    set_mode(explainer, "few_shot", expected)
    images = torch.cat([expected["queries"][q]["pixel_values"] for q in QUERIES])
    questions = [expected["question"], "Is there any anomaly in the image?", "Anything wrong here?"]
    batched = explainer.model.explain(images, questions)
    single = [explainer.model.explain(images[i : i + 1], questions[i])[0] for i in range(len(QUERIES))]
    assert batched == single
    assert batched[0] == expected["queries"][QUERIES[0]]["few_shot_text_original_rule"]


def test_chat_keeps_history(explainer: AnomalyGPT, expected: dict[str, Any]) -> None:
    set_mode(explainer, "zero_shot", expected)
    chat = AnomalyGPTChat(explainer, FIXTURES / "images" / QUERIES[1])
    first = chat.ask(expected["question"])
    second = chat.ask("Where is it?")
    assert chat.history == [(expected["question"], first), ("Where is it?", second)]
    prompt = multi_turn_prompt(chat.history[:1], "Where is it?")
    assert prompt == f"{expected['question']}\n### Assistant: {first}\n### Human: Where is it?"
    assert chat.scores.anomaly_map.shape == (1, 1, 224, 224)
    with pytest.raises(ValueError, match="the question is empty"):
        chat.ask("  ")


def test_multi_turn_prompt_format() -> None:
    history = [("q1", "a1"), ("q2", "a2")]
    assert multi_turn_prompt([], "q") == "q"
    assert multi_turn_prompt(history, "q3") == "q1\n### Assistant: a1\n### Human: q2\n### Assistant: a2\n### Human: q3"


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------
def head_for(weights: dict[str, Any], **changes: Any) -> Any:
    options = {"llm": str(VICUNA), "pandagpt_checkpoint": str(PANDAGPT_DELTA), "explain": True} | changes
    return make_model(**weights, **options).model.ensure_llm_head()


def test_explain_needs_its_weights(weights: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"explanation\.explain=True needs weights\.llm, weights\.pandagpt_checkpoint"):
        make_model(**weights, explain=True)


def test_llm_folder_without_tokenizer(weights: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "vicuna"
    shutil.copytree(VICUNA, folder)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match=r"llm: cannot load a tokenizer from '.*vicuna'.*tokenizer.model"):
        head_for(weights, llm=str(folder))


def test_vocab_and_embedding_mismatch(weights: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "vicuna"
    shutil.copytree(VICUNA, folder)
    (folder / "added_tokens.json").write_text('{"[PAD]": 420, "[EXTRA]": 421}')
    with pytest.raises(CheckpointError, match="tokenizer of 422 tokens but an embedding of 421 rows"):
        head_for(weights, llm=str(folder))


def test_lora_for_another_hidden_size(weights: dict[str, Any], tmp_path: Path) -> None:
    state = dict(torch.load(PANDAGPT_DELTA, weights_only=True))
    for key in list(state):
        if ".lora_A." in key:
            state[key] = torch.zeros(4, 128, dtype=torch.float16)
    path = tmp_path / "pandagpt.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="holds LoRA for hidden size 128; the LLM's is 64"):
        head_for(weights, pandagpt_checkpoint=str(path))


def test_pandagpt_delta_with_renamed_keys(weights: dict[str, Any], tmp_path: Path) -> None:
    state = {k.replace("layers.1.", "layers.7."): v for k, v in torch.load(PANDAGPT_DELTA, weights_only=True).items()}
    path = tmp_path / "pandagpt.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"does not match the LLM's layers: missing .*layers\.1\..*unexpected"):
        head_for(weights, pandagpt_checkpoint=str(path))


def test_lora_keys_without_adapter_name_are_accepted(weights: dict[str, Any], tmp_path: Path) -> None:
    state = {k.replace(".default.", "."): v for k, v in torch.load(PANDAGPT_DELTA, weights_only=True).items()}
    path = tmp_path / "pandagpt.pt"
    torch.save(state, path)
    assert head_for(weights, pandagpt_checkpoint=str(path)).stop_token_id == 265


def test_question_too_long_for_the_context(explainer: AnomalyGPT, expected: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exceed the LLM's context of 2048 tokens"):
        explainer.model.explain(expected["queries"][QUERIES[0]]["pixel_values"], "why " * 3000)


def test_a_long_training_answer_is_cut_to_the_originals_training_length(explainer: AnomalyGPT) -> None:
    """An instruction sample's long answer keeps its first tokens: question + answer <= 1024 text tokens."""
    head = explainer.model.llm_head
    embedding, prompt_map = torch.zeros(1, head.llama_proj.in_features), torch.zeros(1, 1, 224, 224)
    question, answer = "Describe the image.", "a long answer " * 600
    _, mask, labels = head.training_inputs(embedding, prompt_map, [question], [answer])
    answer_tokens = head.encode(answer + head.conversation.answer_suffix)
    question_tokens = head.encode(head.conversation.question_text(question))
    kept = MAX_TRAINING_TEXT_TOKENS - len(question_tokens)
    assert len(answer_tokens) > kept  # the cut applies
    targets = labels[0][labels[0] != -100].tolist()
    assert targets == answer_tokens[:kept]
    assert int(mask.sum()) == labels.shape[1]
    _, _, short = head.training_inputs(embedding, prompt_map, [question], ["No."])
    assert short[0][short[0] != -100].tolist() == head.encode("No." + head.conversation.answer_suffix)


def test_answer_loss_is_the_causal_lm_loss_on_answers_of_different_lengths(explainer: AnomalyGPT) -> None:
    """``lm_loss`` keeps only the logits from the earliest answer on: the same loss as the LM's ``labels=``."""
    head = explainer.model.llm_head
    torch.manual_seed(0)
    embedding, prompt_map = torch.randn(3, head.llama_proj.in_features), torch.rand(3, 1, 224, 224)
    questions = ["Is there any anomaly?", "Is there any anomaly in this long image of a thing?", "Hi?"]
    answers = ["No, there is no anomaly.", "Yes, there is an anomaly in the image, at the top left.", "Yes"]
    embeds, mask, labels = head.training_inputs(embedding, prompt_map, questions, answers)
    with torch.no_grad():
        expected = head.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        loss = head.lm_loss(embedding, prompt_map, questions, answers)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_lora_drops_out_while_training_only(explainer: AnomalyGPT) -> None:
    """PandaGPT's LoRA dropout 0.1: a training-mode forward varies from call to call, an eval one never."""
    from peft.tuners.lora import LoraLayer

    llm = explainer.model.llm_head.llm
    layers = [module for module in llm.modules() if isinstance(module, LoraLayer)]
    assert layers
    assert {layer.lora_dropout["default"].p for layer in layers} == {0.1}
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    try:
        llm.train()
        torch.manual_seed(0)
        first, second = llm(input_ids=ids).logits, llm(input_ids=ids).logits
        assert not torch.equal(first, second)
        llm.eval()
        assert torch.equal(llm(input_ids=ids).logits, llm(input_ids=ids).logits)
    finally:
        llm.eval()


def test_merged_lora_gives_the_same_answers(weights: dict[str, Any], expected: dict[str, Any]) -> None:
    model = make_model(
        **weights,
        class_name="bottle",
        llm=str(VICUNA),
        pandagpt_checkpoint=str(PANDAGPT_DELTA),
        explain=True,
        merge_lora=True,
        max_new_tokens=16,
    )
    reference = expected["queries"][QUERIES[1]]
    answer = model.model.explain(reference["pixel_values"], expected["question"])
    assert answer == [reference["zero_shot_text_original_rule"]]
    # merged: plain layers only, each q/k/v/o the base weight plus B A * alpha / r of the PandaGPT delta
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from anomalib_agpt.explanation.lora import split_pandagpt_delta

    llm = model.model.llm_head.llm
    assert not [name for name, module in llm.named_modules() if isinstance(module, LoraLayer) or "lora_" in name]
    base = AutoModelForCausalLM.from_pretrained(VICUNA, dtype=torch.float32).state_dict()
    _, lora = split_pandagpt_delta(torch.load(PANDAGPT_DELTA, map_location="cpu", weights_only=True), PANDAGPT_DELTA)
    merged = llm.state_dict()
    layers = {key.removesuffix(".lora_A.weight") for key in lora if key.endswith(".lora_A.weight")}
    assert len(layers) == 4 * base_layers(base)
    for layer in sorted(layers):
        down, up = lora[f"{layer}.lora_A.weight"].float(), lora[f"{layer}.lora_B.weight"].float()
        delta = up @ down * model.model.llm_spec.lora_scale  # alpha / r: 32 / 32 for PandaGPT
        assert delta.abs().max() > 0, layer  # the test must see a change
        torch.testing.assert_close(
            merged[f"{layer}.weight"].float(), base[f"{layer}.weight"] + delta, atol=1e-5, rtol=0
        )


def base_layers(state: dict[str, torch.Tensor]) -> int:
    """How many decoder layers a LLaMA state dict holds."""
    return len({key.split(".")[2] for key in state if key.startswith("model.layers.")})


# --------------------------------------------------------------------------------------------
# Streaming LLM loader
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anomalib_agpt.model.presets import LlamaSizes, write_random_llama

    sizes = LlamaSizes(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96, vocab_size=421)
    return write_random_llama(tmp_path_factory.mktemp("llama") / "llm", sizes, VICUNA, seed=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_streamed_llm_equals_from_pretrained(random_llama: Path, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM

    from anomalib_agpt.explanation.llm_loading import load_llm

    ours = load_llm(random_llama, dtype).state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(random_llama, dtype=dtype).state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key].dtype == dtype
        assert torch.equal(ours[key], value), key


def test_streamed_llm_refuses_a_config_that_does_not_fit(random_llama: Path, tmp_path: Path) -> None:
    import json

    from anomalib_agpt.explanation.llm_loading import load_llm

    folder = tmp_path / "llm"
    shutil.copytree(random_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    # whichever MLP weight the file lists first: gate/up are (intermediate, hidden), down is (hidden, intermediate)
    shapes = (
        r"(?:gate|up)_proj\.weight of shape \[96, 64\]; the config needs \[128, 64\]"
        r"|down_proj\.weight of shape \[64, 96\]; the config needs \[64, 128\]"
    )
    with pytest.raises(CheckpointError, match=rf"has model\.layers\.0\.mlp\.(?:{shapes})\."):
        load_llm(folder, torch.float32)


def test_untrained_head_parts_start_fresh_without_training(weights: dict[str, Any]) -> None:
    """Without the PandaGPT delta, named head parts may start untrained; nothing trains or needs gradients."""
    with pytest.raises(ValueError, match="pandagpt_checkpoint"):
        make_model(**weights, llm=str(VICUNA), explain=True)
    model = make_model(**weights, llm=str(VICUNA), explain=True, untrained_head_parts=["llama_proj"])
    assert model.learning_type == LearningType.ZERO_SHOT
    assert model.trainer_arguments == {}
    head = model.model.ensure_llm_head()
    assert not any(parameter.requires_grad for parameter in model.parameters())
    again = make_model(**weights, llm=str(VICUNA), explain=True, untrained_head_parts=["llama_proj"])
    # fresh parts come from the head's seed: the same model twice
    torch.testing.assert_close(again.model.ensure_llm_head().llama_proj.weight, head.llama_proj.weight)


def test_a_map_sensitive_prompt_learner_reads_zero_from_a_normal_map() -> None:
    """For another LLM the prompt learner starts map-sensitive: zero tokens for an all-normal map, tokens of a
    word embedding's size for a defect's blob, all from the map (the default init's biases swamp it)."""
    from anomalib_agpt.explanation.prompt_learner import PromptLearner

    torch.manual_seed(0)
    normal, defect = torch.zeros(1, 1, 224, 224), torch.zeros(1, 1, 224, 224)
    defect[..., 100:120, 60:80] = 0.5
    with torch.no_grad():
        sensitive = PromptLearner.fresh(64, map_sensitive=True)
        assert torch.equal(sensitive(normal)[0, 9:], torch.zeros(9, 64))
        tokens = sensitive(defect)[0, 9:]
        assert 1.0 < float(tokens.norm(dim=-1).max()) < 100.0
        default = PromptLearner.fresh(64)
        normal_tokens, defect_tokens = default(normal)[0, 9:], default(defect)[0, 9:]
        change = (defect_tokens - normal_tokens).norm(dim=-1).max() / normal_tokens.norm(dim=-1).min()
        assert float(change) < 0.5  # the default init: the same tokens, nearly, whatever the map


def test_the_original_setting_keeps_the_default_init(weights: dict[str, Any]) -> None:
    """With the PandaGPT delta (Vicuna, the original's training) a from-scratch prompt learner is PyTorch's."""
    towers = {key: value for key, value in weights.items() if key != "anomalygpt_checkpoint"}  # from scratch
    model = make_model(
        **towers, llm=str(VICUNA), pandagpt_checkpoint=str(PANDAGPT_DELTA), trainable=["decoder", "prompt_learner"]
    )
    model.prepare(load_llm=True)
    convolutions = [m for m in model.model.llm_head.prompt_learner.meta_net if isinstance(m, torch.nn.Conv2d)]
    assert all(float(conv.bias.abs().max()) > 0 for conv in convolutions)
