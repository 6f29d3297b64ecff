"""The ids the explanation head feeds the LLM equal the original's: SentencePiece per piece, BOS once.

The original tokenized with the slow SentencePiece ``LlamaTokenizer`` of transformers 4.29: each prompt
piece separately, no special tokens added, i.e. ``SentencePieceProcessor.encode(piece)`` per piece (legacy:
every piece a fresh sentence with the dummy '▁' prefix), BOS added once in front. Checked for the reference
set's tiny vocabulary and for a real 32k LLaMA-family vocabulary (``tokenizer.model.v1`` shipped by the
``mistral-common`` package, installed by scripts/setup_env.sh), both in a Vicuna v0-like tokenizer folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import sentencepiece
import torch

from anomalib_agpt.explanation.conversation import (
    ANOMALY_QUESTION,
    ASSISTANT_CUE,
    IMAGE_PREFIX,
    IMAGE_SUFFIX,
    NORMAL_ANSWER,
    STOP_PIECE,
    TURN_END,
    default_question,
    multi_turn_prompt,
)
from anomalib_agpt.explanation.llm_head import LLMHead, LLMHeadSpec
from anomalib_agpt.explanation.llm_loading import load_tokenizer, sentencepiece_encoder

from .conftest import FIXTURES, PANDAGPT_DELTA

VICUNA = FIXTURES / "vicuna"
IMAGE_EMBED_DIM = 32  # the reference set's joint embedding (llama_proj's input)
NUM_PROMPTS = 18

QUESTIONS = [
    ANOMALY_QUESTION,
    default_question("metal_nut"),
    "Is there any anomaly in the image? Answer in 3 words, please!",
    "naïve café: is the crème brûlée 100% OK (v2.0)?",
    "Two  spaces,   three spaces and a tab\there.",
    " A leading space?",
    "  Two leading spaces, trailing ones  ",
    "Lines\nand\n\nblank lines\n",
    "日本語 ✓ 🙂 — 'quotes' \"too\"",
    multi_turn_prompt([(ANOMALY_QUESTION, NORMAL_ANSWER)], "Where is it?"),
]
ANSWERS = [
    NORMAL_ANSWER,
    "Yes, there is an anomaly in the image, at the top left of the image.",
    "A ### inside, and a\n### turn end",
    " A leading space, and 42 digits.",
    "Ends with spaces  ",
]
FIXED_PIECES = [IMAGE_PREFIX, IMAGE_SUFFIX, ASSISTANT_CUE, TURN_END, STOP_PIECE, "###", "\n##"]


def real_vocabulary() -> Path | None:
    """``tokenizer.model.v1`` (32000 SentencePiece pieces) of the installed ``mistral-common``, if any."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"
    return path if path.is_file() else None


def special_token(content: str) -> dict[str, object]:
    """A special token as Vicuna v0's tokenizer_config.json writes it."""
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False}


def vicuna_v0_folder(folder: Path, model_file: Path) -> Path:
    """An LLM folder holding its tokenizer as Vicuna v0's does, with a tiny random LLaMA of the same vocabulary.

    tokenizer.model, tokenizer_config.json (LlamaTokenizer; <s>, </s>, <unk> as AddedTokens; no pad),
    special_tokens_map.json (pad '[PAD]') and added_tokens.json ('[PAD]' after the SentencePiece pieces).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    size = processor.get_piece_size()
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(model_file.read_bytes())
    bos, eos, unk = (processor.id_to_piece(i) for i in (processor.bos_id(), processor.eos_id(), processor.unk_id()))
    tokens = {"bos_token": special_token(bos), "eos_token": special_token(eos), "unk_token": special_token(unk)}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        **tokens,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({**tokens, "pad_token": "[PAD]"}))
    (folder / "added_tokens.json").write_text(json.dumps({"[PAD]": size}))
    llm_config = LlamaConfig(
        vocab_size=size + 1,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=processor.bos_id(),
        eos_token_id=processor.eos_id(),
        pad_token_id=size,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(llm_config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["reference_set", "llama_32k"])
def llm_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "reference_set":
        return VICUNA
    model_file = real_vocabulary()
    if model_file is None:
        pytest.skip("the 32k vocabulary comes from mistral-common: pip install --no-deps mistral-common")
    return vicuna_v0_folder(tmp_path_factory.mktemp("llm") / "vicuna_v0_32k", model_file)


@pytest.fixture(scope="module")
def head(llm_folder: Path) -> LLMHead:
    """The product's head loaded from the folder in PandaGPT's format (Vicuna v0), as a model would load it."""
    pandagpt, fresh = (str(PANDAGPT_DELTA), ("prompt_learner",)) if llm_folder == VICUNA else (None, ("llama_proj",))
    spec = LLMHeadSpec(
        str(llm_folder), pandagpt, llm_dtype="fp32", conversation="pandagpt", fresh_parts=("prompt_learner", *fresh)
    )
    return LLMHead.from_spec(spec, {}, IMAGE_EMBED_DIM, torch.device("cpu")).eval()


@pytest.fixture(scope="module")
def processor(llm_folder: Path) -> sentencepiece.SentencePieceProcessor:
    """The reference: SentencePiece itself on the folder's model file."""
    return sentencepiece.SentencePieceProcessor(model_file=str(llm_folder / "tokenizer.model"))


def test_the_folder_loads_as_vicuna_v0(llm_folder: Path, processor: sentencepiece.SentencePieceProcessor) -> None:
    """What load_tokenizer returns for the folder: SentencePiece's ids for <s>/</s>/<unk>, '[PAD]' last."""
    tokenizer = load_tokenizer(llm_folder)
    size = processor.get_piece_size()
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert len(tokenizer) == size + 1
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (processor.bos_id(), processor.eos_id())
    assert tokenizer.unk_token_id == processor.unk_id()
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("[PAD]", size)
    assert sentencepiece_encoder(tokenizer) is not None


def test_head_uses_sentencepiece_and_its_stop_piece(
    head: LLMHead, processor: sentencepiece.SentencePieceProcessor
) -> None:
    assert head.conversation.name == "pandagpt"
    assert head.sentencepiece is not None
    # the stop is what follows the newline of a trained answer's turn end: '##' in LLaMA's split (the
    # original's stop), '###' in a vocabulary that has that piece (generation never emits '##' there)
    pieces = [processor.id_to_piece(i) for i in processor.encode(NORMAL_ANSWER + TURN_END)]
    after_newline = pieces[pieces.index("<0x0A>") + 1]
    assert head.stop_token_id == processor.piece_to_id(after_newline)
    assert head.stop_token_id != processor.unk_id()
    if processor.piece_to_id("###") == processor.unk_id():  # the reference set's vocabulary: the original's stop
        assert head.stop_token_id == processor.piece_to_id(STOP_PIECE)
    assert head._before_ids == [processor.bos_id(), *processor.encode(IMAGE_PREFIX)]
    assert head._middle_ids == processor.encode(IMAGE_SUFFIX)


@pytest.mark.parametrize("piece", FIXED_PIECES)
def test_fixed_pieces_equal_sentencepiece(
    head: LLMHead, processor: sentencepiece.SentencePieceProcessor, piece: str
) -> None:
    assert head.encode(piece) == processor.encode(piece)


@pytest.mark.parametrize("question", QUESTIONS)
def test_question_tails_equal_sentencepiece(
    head: LLMHead, processor: sentencepiece.SentencePieceProcessor, question: str
) -> None:
    text = head.conversation.question_text(question)
    assert text == question + ASSISTANT_CUE
    assert head.encode(text) == processor.encode(text)


@pytest.mark.parametrize("answer", ANSWERS)
def test_training_answers_equal_sentencepiece(
    head: LLMHead, processor: sentencepiece.SentencePieceProcessor, answer: str
) -> None:
    """The answer ids training learns (its labels) and feeds (its embeddings) are SentencePiece's."""
    image_embedding = torch.randn(1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(1))
    anomaly_map = torch.rand(1, 1, 224, 224, generator=torch.Generator().manual_seed(2))
    embeds, mask, labels = head.training_inputs(image_embedding, anomaly_map, [ANOMALY_QUESTION], [answer])
    expected = processor.encode(answer + TURN_END)
    assert labels[0][labels[0] != -100].tolist() == expected
    table = head.llm.get_input_embeddings().weight
    assert torch.equal(embeds[0, -len(expected) :], table[expected])
    assert mask.all()


@pytest.mark.parametrize("question", [QUESTIONS[0], QUESTIONS[3], QUESTIONS[5]])
def test_full_input_sequence_is_bos_then_sentencepiece_pieces(
    head: LLMHead, processor: sentencepiece.SentencePieceProcessor, question: str
) -> None:
    """build_inputs = embeddings of [BOS] + sp(before), image token, sp(middle), 18 prompts, sp(question + cue)."""
    image_embedding = torch.randn(1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(3))
    anomaly_map = torch.rand(1, 1, 224, 224, generator=torch.Generator().manual_seed(4))
    embeds, mask = head.build_inputs(image_embedding, anomaly_map, [question])

    before = [processor.bos_id(), *processor.encode(IMAGE_PREFIX)]
    middle = processor.encode(IMAGE_SUFFIX)
    after = processor.encode(question + ASSISTANT_CUE)
    table = head.llm.get_input_embeddings().weight
    with torch.no_grad():
        image_token = head.llama_proj(image_embedding)
        prompts = head.prompt_learner(anomaly_map)[0]
    assert prompts.shape[0] == NUM_PROMPTS
    reference = torch.cat([table[before], image_token, table[middle], prompts, table[after]])
    assert embeds.shape == (1, len(before) + 1 + len(middle) + NUM_PROMPTS + len(after), table.shape[1])
    assert torch.equal(embeds[0], reference)
    assert mask.all()


def test_special_token_text_splits_as_the_slow_tokenizer_did(
    head: LLMHead, processor: sentencepiece.SentencePieceProcessor
) -> None:
    """Special/added tokens written in a text become their ids; the text around them is SentencePiece's.

    (No whitespace next to the '[PAD]': the original, given it as a plain string, stripped whitespace there.)
    """
    pad = head.tokenizer.pad_token_id
    text = "a<s>b </s> <unk>[PAD]c"
    expected = [
        *processor.encode("a"),
        processor.bos_id(),
        *processor.encode("b "),
        processor.eos_id(),
        *processor.encode(" "),
        processor.unk_id(),
        pad,
        *processor.encode("c"),
    ]
    assert head.encode(text) == expected


def test_no_sentencepiece_path_without_a_matching_model_file() -> None:
    """GGUF/tokenizer.json-only tokenizers, and a model file of another vocabulary, keep the tokenizer's ids."""
    tokenizer = load_tokenizer(VICUNA)
    assert sentencepiece_encoder(SimpleNamespace(vocab_file=None)) is None
    assert sentencepiece_encoder(SimpleNamespace(vocab_file=str(VICUNA / "missing.model"))) is None
    not_a_model = SimpleNamespace(vocab_file=str(VICUNA / "config.json"))
    assert sentencepiece_encoder(not_a_model) is None
    model_file = real_vocabulary()
    if model_file is not None:
        other = SimpleNamespace(
            vocab_file=str(model_file),
            convert_tokens_to_ids=tokenizer.convert_tokens_to_ids,
            added_tokens_decoder=tokenizer.added_tokens_decoder,
        )
        assert sentencepiece_encoder(other) is None


def test_turns_end_on_the_token_after_the_newline_in_a_vocabulary_with_a_triple_hash(tmp_path: Path) -> None:
    """A byte-level vocabulary where '\\n###' is '\\n', '###' (SmolLM2's): '##' exists but never follows an
    answer, so stopping on it would let every answer run into a next turn (and its 'Yes')."""
    from transformers import AutoTokenizer

    from anomalib_agpt.explanation.llm_loading import stop_piece_id
    from anomalib_agpt.model.presets import write_tiny_llm

    tokenizer = AutoTokenizer.from_pretrained(write_tiny_llm(tmp_path / "llm", seed=0), local_files_only=True)
    split = [tokenizer.decode([i]) for i in tokenizer(NORMAL_ANSWER + TURN_END, add_special_tokens=False).input_ids]
    assert split[-3:] == ["\n", "##", "#"]
    assert stop_piece_id(tokenizer) == tokenizer.convert_tokens_to_ids("##")
    tokenizer.add_special_tokens({"additional_special_tokens": ["###"]})  # matched whole, as a merge would
    split = [tokenizer.decode([i]) for i in tokenizer(NORMAL_ANSWER + TURN_END, add_special_tokens=False).input_ids]
    assert split[-2:] == ["\n", "###"]
    assert stop_piece_id(tokenizer) == tokenizer.convert_tokens_to_ids("###") != tokenizer.convert_tokens_to_ids("##")
