"""LLMs: a Hugging Face folder (config.json, tokenizer, weights) or one GGUF file, read for sizes and tokenizer.

Folders are read for ``config.json``, the input embedding's shape (from a safetensors header, or a
memory-mapped ``pytorch_model*.bin``) and the tokenizer, with the product's own tokenizer loading
(:mod:`anomalib_agpt.explanation.llm_loading`); GGUF files for their header.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from anomalib_agpt.apps.check_weights.reading import _safetensors_header, _torch_load, _unreadable
from anomalib_agpt.apps.check_weights.report import LLM, WeightReport
from anomalib_agpt.errors import CheckpointError
from anomalib_agpt.explanation.conversation import STOP_PIECE
from anomalib_agpt.explanation.llm_loading import stop_piece_id
from anomalib_agpt.weights.checkpoints import first_line
from anomalib_agpt.weights.safetensors import SAFETENSORS_DTYPES


def _embedding_key(keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k.endswith("embed_tokens.weight")), None)


def _safetensors_embedding(files: Sequence[Path]) -> tuple[list[int], str] | None:
    for file in files:
        header = _safetensors_header(file)
        key = _embedding_key(list(header))
        if key is not None:
            dtype = str(header[key]["dtype"])
            known = SAFETENSORS_DTYPES.get(dtype)
            return list(header[key]["shape"]), str(known).removeprefix("torch.") if known else dtype.lower()
    return None


def _bin_embedding(folder: Path, files: Sequence[Path]) -> tuple[list[int], str] | None:
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        key = _embedding_key(list(weight_map))
        files = [folder / weight_map[key]] if key else files
    for file in files:
        state = _torch_load(file)
        if isinstance(state, Mapping) and (key := _embedding_key(list(state))):
            tensor = state[key]
            return list(tensor.shape), str(tensor.dtype).removeprefix("torch.")
    return None


def _describe_llm_folder(folder: Path, report: WeightReport) -> None:
    from anomalib_agpt.explanation.llm_loading import load_tokenizer

    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as error:
        raise _unreadable(f"its config.json is not valid JSON ({error})") from error
    safetensors = sorted(folder.glob("*.safetensors"))
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if safetensors:
        weight_format, embedding = "safetensors", _safetensors_embedding(safetensors)
    elif bins:
        weight_format, embedding = "bin", _bin_embedding(folder, bins)
    elif any(folder.glob("*.gguf")):
        raise _unreadable("an LLM folder whose weights are only .gguf files; pass the .gguf file itself")
    else:
        raise _unreadable("config.json but no weights (*.safetensors or pytorch_model*.bin) in the folder")
    architecture = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
    report.kind = LLM
    report.sizes = {
        "architecture": architecture,
        "hidden_size": config.get("hidden_size"),
        "num_layers": config.get("num_hidden_layers"),
        "config_vocab_size": config.get("vocab_size"),
        "embedding_rows": embedding[0][0] if embedding else None,
        "embedding_width": embedding[0][1] if embedding else None,
        "weight_format": weight_format,
        "weight_dtype": embedding[1] if embedding else None,
        "gguf": False,
    }
    report.details.append(
        f"{LLM} folder: {architecture}, hidden size {report.sizes['hidden_size']}, {report.sizes['num_layers']} "
        f"layers, vocabulary {report.sizes['config_vocab_size']} (config) / {report.sizes['embedding_rows']} "
        f"embedding rows; weights {weight_format} ({report.sizes['weight_dtype']})",
    )
    try:
        tokenizer = load_tokenizer(folder)
    except CheckpointError as error:
        report.sizes |= {"tokenizer_size": None, "tokenizer_problem": str(error)}
        report.details.append("tokenizer: MISSING or unreadable")
        return
    chat = bool(getattr(tokenizer, "chat_template", None))
    stop_ok = chat or stop_piece_id(tokenizer) is not None
    report.sizes |= {"tokenizer_size": len(tokenizer), "chat_template": chat, "stop_piece": stop_ok}
    report.details.append(f"tokenizer: {type(tokenizer).__name__}, {len(tokenizer)} tokens; {_conversation(chat)}")


def _conversation(chat: bool) -> str:
    if chat:
        return "has a chat template (used instead of PandaGPT's '### Human:' format)"
    return "no chat template: PandaGPT's '### Human: ... ### Assistant:' format, as the released model"


def _describe_gguf(path: Path, report: WeightReport) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise _unreadable("a GGUF file; reading it (here and in the model) needs the gguf package (pip install gguf)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        fields = reader.fields
        architecture = str(fields["general.architecture"].contents())
        hidden = int(fields[f"{architecture}.embedding_length"].contents())
        layers = int(fields[f"{architecture}.block_count"].contents())
    except Exception as error:
        raise _unreadable(f"cannot read it as a GGUF LLM ({first_line(error)})") from error
    tokens = fields.get("tokenizer.ggml.tokens")
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    chat = "tokenizer.chat_template" in fields
    types = Counter(t.tensor_type.name for t in reader.tensors).most_common(1)
    report.kind = LLM
    report.sizes = {
        "architecture": architecture,
        "hidden_size": hidden,
        "num_layers": layers,
        "config_vocab_size": len(tokens.data) if tokens else None,
        "embedding_rows": int(embedding.shape[-1]) if embedding is not None else None,
        "embedding_width": int(embedding.shape[0]) if embedding is not None else None,
        "weight_format": "gguf",
        "weight_dtype": types[0][0] if types else None,
        "gguf": True,
        "tokenizer_size": len(tokens.data) if tokens else None,
        "chat_template": chat,
        "stop_piece": chat or (tokens is not None and STOP_PIECE in tokens.contents()),
    }
    if tokens is None:
        report.sizes["tokenizer_problem"] = "the GGUF file holds no tokenizer (tokenizer.ggml.tokens)"
    report.details += [
        f"{LLM} file: {architecture}, hidden size {hidden}, {layers} layers, {report.sizes['embedding_rows']} "
        f"embedding rows; weights gguf ({report.sizes['weight_dtype']})",
        f"tokenizer: {report.sizes['tokenizer_size'] or 'MISSING'} tokens (in the GGUF file); {_conversation(chat)}",
    ]
