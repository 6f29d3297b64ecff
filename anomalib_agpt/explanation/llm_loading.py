"""Load the LLM and its tokenizer from a local folder, straight in the requested dtype, and check its options.

safetensors folders stream into place, adding about one copy of the weights to memory:
``from_pretrained`` maps the safetensors file and copies out of the mapping, so the mapped pages
and the parameters are both resident at the peak (about twice the file). Here the model is built
without initialising its weights, and each tensor is read from the file straight into its
parameter with ordinary reads (the page cache is not the process's memory); a dtype change goes
through one tensor-sized buffer. Folders with only ``pytorch_model*.bin``, ``.gguf`` files and
8-/4-bit loading (bitsandbytes, CUDA only) go through ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from anomalib_agpt.errors import OptionError, SetupError, check_choice
from anomalib_agpt.explanation.conversation import NORMAL_ANSWER, TURN_END
from anomalib_agpt.weights import checkpoints as ckpt
from anomalib_agpt.weights.checkpoints import CheckpointError
from anomalib_agpt.weights.safetensors import safetensors_entries

if TYPE_CHECKING:
    from sentencepiece import SentencePieceProcessor

LLMDtype = Literal["auto", "auto_fp16", "fp32", "fp16", "bf16"]
AttnImplementation = Literal["sdpa", "eager"]
LLMQuantization = Literal["8bit", "4bit"]
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
LLM_QUANTIZATIONS = (None, "8bit", "4bit")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _no_init_weights() -> object:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def _read_into(file: object, target: torch.Tensor, dtype: torch.dtype, shape: list[int], span: int) -> None:
    """Fill ``target`` from the file's current position (directly when the dtypes agree)."""
    direct = target.dtype == dtype and target.is_contiguous()
    destination = target if direct else torch.empty(shape, dtype=dtype)
    view = destination.view(-1).view(torch.uint8) if destination.numel() else destination.view(torch.uint8)
    if file.readinto(memoryview(view.numpy())) != span:  # type: ignore[attr-defined]
        msg = "llm: a safetensors file ended early."
        raise CheckpointError(msg)
    if destination is not target:
        target.copy_(destination)


def stream_safetensors_llm(folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa") -> nn.Module:
    """Build the folder's causal LM uninitialised in ``dtype`` and read every weight in place.

    ``attn_implementation`` is passed on because ``from_config``, unlike ``from_pretrained``, defaults to eager.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with _no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    targets = model.state_dict()
    ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    loaded: set[str] = set()
    unexpected: list[str] = []
    with torch.no_grad():
        for path in sorted(folder.glob("*.safetensors")):
            with path.open("rb", buffering=0) as file:
                for name, file_dtype, shape, start, end in safetensors_entries(path):
                    target = targets.get(name)
                    if target is None:
                        if not any(p.search(name) for p in ignored):
                            unexpected.append(name)
                        continue
                    if list(target.shape) != shape:
                        msg = f"llm: '{path}' has {name} of shape {shape}; the config needs {list(target.shape)}."
                        raise CheckpointError(msg)
                    file.seek(start)
                    _read_into(file, target, file_dtype, shape, end - start)
                    loaded.add(name)
    model.tie_weights()  # a tied lm_head is the embedding just read (a file writes it once)
    state = model.state_dict()
    pointers = {state[name].data_ptr() for name in loaded}
    missing = sorted(k for k, v in state.items() if k not in loaded and v.data_ptr() not in pointers)
    if missing or unexpected:
        msg = (
            f"llm: '{folder}' does not match its config: missing {missing or 'nothing'}; "
            f"unexpected {unexpected or 'nothing'}"
        )
        raise CheckpointError(msg)
    return model


def resolve_dtype(llm_dtype: LLMDtype, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU, bf16 on an accelerator; ``auto_fp16``: fp32 on CPU, fp16 (the original's) elsewhere."""
    if llm_dtype in ("auto", "auto_fp16"):
        accelerated = torch.bfloat16 if llm_dtype == "auto" else torch.float16
        return torch.float32 if device.type == "cpu" else accelerated
    if llm_dtype not in _DTYPES:
        msg = f"llm_dtype='{llm_dtype}': expected one of auto, auto_fp16, fp32, fp16, bf16."
        raise OptionError(msg)
    return _DTYPES[llm_dtype]


def check_llm_options(attn_implementation: str, llm_quantization: str | None, merge_lora: bool) -> None:
    """Values and combinations of the LLM's inference options (nothing is loaded or probed)."""
    check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    check_choice("llm_quantization", llm_quantization, LLM_QUANTIZATIONS)
    if llm_quantization is not None and merge_lora:
        msg = (
            f"merge_lora=True with llm_quantization='{llm_quantization}': the LoRA cannot be folded into "
            "quantised weights (it would be rounded away); keep merge_lora=False (the LoRA runs beside them)."
        )
        raise OptionError(msg)


def check_quantization_support(llm_quantization: str, device: torch.device | None = None) -> None:
    """Refuse before anything loads: bitsandbytes quantises on CUDA only and is an optional extra."""
    needs = []
    if not torch.cuda.is_available():
        needs.append("a CUDA GPU (none is available)")
    elif device is not None and device.type != "cuda":
        needs.append(f"the model on a CUDA device (it is on {device}; call model.to('cuda') first)")
    if importlib.util.find_spec("bitsandbytes") is None:
        needs.append("the bitsandbytes package (pip install 'anomalib-agpt[quant]')")
    if needs:
        msg = (
            f"llm_quantization='{llm_quantization}' loads the LLM through bitsandbytes, which needs "
            f"{' and '.join(needs)}. Otherwise leave llm_quantization=None (llm_dtype='fp16'/'bf16' halves memory)."
        )
        raise SetupError(msg)


def _gguf(path: Path) -> dict[str, str]:
    """``from_pretrained`` arguments for a single ``.gguf`` file (needs the ``gguf`` package)."""
    return {"gguf_file": path.name} if path.suffix == ".gguf" else {}


VOCAB_HINT = "Vicuna v0 has 32001 of both; a 32000-row LLaMA with a 32001-token tokenizer is the usual mix-up"
"""What a tokenizer that does not fit its LLM's embedding usually means."""


def tokenizer_fits(tokens: int, rows: int, gguf: bool) -> bool:
    """Whether a tokenizer of ``tokens`` fits an embedding of ``rows``: equal (a GGUF file may pad rows)."""
    return tokens <= rows if gguf else tokens == rows


def stop_piece_id(tokenizer: Any, encode: Callable[[str], list[int]] | None = None) -> int | None:  # noqa: ANN401
    r"""The id PandaGPT's turns end on: the token after the newline of a trained answer's ``"\n###"``.

    LLaMA's vocabulary splits it ``"\n", "##", "#"`` (the original stops on ``##``); a GPT-2-style one
    (SmolLM2) makes ``"\n", "###"``, where a ``##`` piece exists but is never generated after an answer.
    ``encode``: how the head tokenises training answers (default: the tokenizer, no special tokens).
    ``None`` when the turn end has no token after a newline.
    """
    encode = encode or (lambda text: tokenizer(text, add_special_tokens=False).input_ids)
    ids = encode(NORMAL_ANSWER + TURN_END)
    newlines = [index for index, token in enumerate(ids) if "\n" in tokenizer.decode([token])]
    if not newlines or newlines[-1] + 1 >= len(ids):
        return None
    stop = ids[newlines[-1] + 1]
    return None if stop == tokenizer.unk_token_id else int(stop)


def load_tokenizer(folder: Path) -> object:
    """The LLM folder's tokenizer through ``AutoTokenizer`` (sentencepiece + protobuf for LLaMA).

    ``folder`` may also be a ``.gguf`` file, whose tokenizer transformers reads with ``gguf``.
    """
    from transformers import AutoTokenizer

    if folder.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(folder.parent, local_files_only=True, **_gguf(folder))
    expected = "the LLM's tokenizer files (tokenizer.model or tokenizer.json, with tokenizer_config.json)"
    if not any((folder / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        msg = f"llm: cannot load a tokenizer from '{folder}': it lacks {expected}."
        raise ckpt.CheckpointError(msg)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:
        reason = " ".join(str(error).split())
        msg = f"llm: cannot load a tokenizer from '{folder}' ({type(error).__name__}: {reason}); it needs {expected}."
        raise ckpt.CheckpointError(msg) from error


class SentencePieceEncoder:
    """Text to ids as the original's slow LLaMA tokenizer (transformers 4.29, legacy) made them.

    Every run of text between the tokenizer's special and added tokens (``<s>``, ``</s>``, ``<unk>``,
    Vicuna v0's ``[PAD]``) is encoded by SentencePiece itself as a fresh sentence: with the dummy
    ``▁`` prefix even when the text starts with a space, and runs of spaces split as SentencePiece
    splits them. The special tokens in the text become their ids, with no whitespace stripped around
    them (Vicuna v0's ``<s>``, ``</s>``, ``<unk>`` strip none; only next to a literal ``[PAD]``, a plain
    string there, did 4.29 strip it). The fast (``tokenizers``) LLaMA tokenizer of transformers 5
    differs on both counts, whatever its ``legacy``/``from_slow`` options, so AnomalyGPT's prompts
    and answers go through this for a SentencePiece vocabulary.
    """

    def __init__(self, processor: SentencePieceProcessor, special_ids: dict[str, int]) -> None:
        self.processor = processor
        self.special_ids = special_ids
        # longest first: at one position the longest special token wins, as the slow tokenizer's trie did
        names = sorted(special_ids, key=len, reverse=True)
        self._specials = re.compile("|".join(re.escape(name) for name in names)) if names else None

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS added."""
        if self._specials is None:
            return list(self.processor.encode(text))
        ids: list[int] = []
        start = 0
        for match in self._specials.finditer(text):
            if match.start() > start:
                ids += self.processor.encode(text[start : match.start()])
            ids.append(self.special_ids[match.group()])
            start = match.end()
        if start < len(text):
            ids += self.processor.encode(text[start:])
        return ids


def sentencepiece_encoder(tokenizer: object) -> SentencePieceEncoder | None:
    """The SentencePiece path of a tokenizer read from a ``tokenizer.model`` with the same ids; else None.

    None for tokenizers without a SentencePiece model file (``tokenizer.json`` only, GGUF) and when the
    model file's pieces do not have the tokenizer's ids (then the tokenizer alone is used).
    """
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if not isinstance(vocab_file, (str, Path)) or not Path(vocab_file).is_file():
        return None
    import sentencepiece

    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(vocab_file))
    except (OSError, RuntimeError):
        return None
    size = processor.get_piece_size()
    pieces = [processor.id_to_piece(index) for index in range(size)]
    if tokenizer.convert_tokens_to_ids(pieces) != list(range(size)):  # type: ignore[attr-defined]
        return None
    added = tokenizer.added_tokens_decoder.items()  # type: ignore[attr-defined]
    return SentencePieceEncoder(processor, {str(token): int(index) for index, token in added})


def bitsandbytes_config(llm_quantization: LLMQuantization, dtype: torch.dtype) -> object:
    """The ``BitsAndBytesConfig``: LLM.int8 for ``8bit``, NF4 computing in ``dtype`` for ``4bit``."""
    from transformers import BitsAndBytesConfig

    if llm_quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_llm(
    folder: Path,
    dtype: torch.dtype,
    attn_implementation: AttnImplementation = "sdpa",
    llm_quantization: LLMQuantization | None = None,
    device: torch.device | None = None,
) -> nn.Module:
    """A causal LM straight in ``dtype``; missing or mis-shaped weights are errors.

    safetensors folders stream into place (about one copy of the weights in memory); folders with
    ``pytorch_model*.bin`` only (e.g. a FastChat-merged Vicuna v0) go through ``from_pretrained``,
    as does quantised loading (bitsandbytes quantises while placing the weights on ``device``).
    """
    check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    extra: dict[str, Any] = {}
    if llm_quantization is not None:
        check_quantization_support(llm_quantization, device)
        device = device or torch.device("cuda")
        if device.type == "cuda":
            place: int | str = device.index if device.index is not None else torch.cuda.current_device()
        else:
            place = str(device)
        extra = {"quantization_config": bitsandbytes_config(llm_quantization, dtype), "device_map": {"": place}}
    elif folder.is_dir() and any(folder.glob("*.safetensors")):
        return stream_safetensors_llm(folder, dtype, attn_implementation).eval().requires_grad_(False)
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder.parent if folder.suffix == ".gguf" else folder,
            dtype=dtype,
            low_cpu_mem_usage=True,
            local_files_only=True,
            output_loading_info=True,
            attn_implementation=attn_implementation,
            **_gguf(folder),
            **extra,
        )
    except Exception as error:
        msg = f"llm: cannot load a causal LM from '{folder}': {type(error).__name__}: {error}"
        raise ckpt.CheckpointError(msg) from error
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        msg = f"llm: '{folder}' does not match its config: {problems}"
        raise ckpt.CheckpointError(msg)
    return model.eval().requires_grad_(False)


def _gguf_to_folder(path: Path, folder: Path) -> None:
    """Dequantise a GGUF LLM once (as transformers does on every load) and write it as a safetensors folder."""
    from safetensors.torch import save_file

    model = load_llm(path, torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):  # transformers marks a GGUF load quantised: the weights are not now
        del config.quantization_config
    config.save_pretrained(folder)
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():  # a tied lm_head is written once, as the embedding it is
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor.contiguous()
    save_file(state, str(folder / "model.safetensors"))
    load_tokenizer(path).save_pretrained(folder)  # type: ignore[attr-defined]


def cached_gguf_folder(path: Path, cache: Path | None = None) -> Path:
    """A ``.gguf`` LLM as a safetensors folder, converted once per file content (under ``$ANOMALIB_AGPT_HOME/llms``).

    transformers reads a GGUF file three times and dequantises it on every load (50 s for SmolLM2-135M on
    two cores); the folder streams in about a second with the same float32 weights and tokenizer.
    """
    return ckpt.converted_once(path, "llms", _gguf_to_folder, cache)
