"""``anomalib-agpt check-weights``: say what each weight file or folder is, and whether the set is complete and fits.

Recognition is the product's own (:mod:`anomalib_agpt.weights.checkpoints`, the PandaGPT delta split of
:mod:`anomalib_agpt.explanation.lora`, the tokenizer loading of :mod:`anomalib_agpt.explanation.llm_loading`),
so a file this command accepts is a file the model accepts in that slot. Weights are not loaded into
memory: PyTorch files are memory-mapped (``weights_only=True``; only legacy pre-zip files, which cannot
be mapped, are read whole), safetensors and GGUF files are read for their headers, LLM folders for
``config.json``, the embedding's shape and the tokenizer.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anomalib_agpt.errors import AnomalyGPTError, CheckpointError, MissingFileError
from anomalib_agpt.explanation.conversation import STOP_PIECE
from anomalib_agpt.explanation.llm_loading import VOCAB_HINT, stop_piece_id, tokenizer_fits
from anomalib_agpt.weights import checkpoints as ckpt
from anomalib_agpt.weights.checkpoints import NUM_TAPS, first_line
from anomalib_agpt.weights.safetensors import SAFETENSORS_DTYPES, read_safetensors_header

IMAGEBIND = "ImageBind weights"
ANOMALYGPT = "AnomalyGPT delta"
PANDAGPT = "PandaGPT delta"
LLM = "LLM"
LIGHTNING = "Lightning checkpoint"

HUGE = {"vision_width": 1280, "vision_layers": 32, "text_width": 1024, "text_layers": 24}
"""ImageBind-Huge sizes (16 heads in both towers, the model's defaults)."""
PROTOCOLS = {
    "train_mvtec": "trained on MVTec AD: use it for VisA evaluation",
    "train_visa": "trained on VisA: use it for MVTec AD evaluation",
    "train_supervised": "trained on MVTec AD and VisA: not for cross-dataset (zero-/few-shot protocol) numbers",
}
_RELEASED_PANDAGPT = "pandagpt_7b_max_len_1024"
_GENERIC_NAMES = {"pytorch_model.pt", "pytorch_model.bin", "model.ckpt", "last.ckpt"}
_LORA_LAYER = re.compile(r"model\.layers\.(\d+)\.")

DESCRIPTION = """Say what each weight file or folder is and whether the set is complete and fits together.

Give any of: imagebind_huge.pth; an AnomalyGPT delta (train_mvtec|train_visa|train_supervised/
pytorch_model.pt, or its folder); the PandaGPT delta (pandagpt_7b_max_len_1024/pytorch_model.pt);
the Vicuna-7B v0 folder you merged (config.json, tokenizer, *.safetensors or pytorch_model*.bin) or a
.gguf LLM file; a Lightning checkpoint (model.ckpt) written by this product. Relative paths are also
looked up in $ANOMALIB_AGPT_HOME. Nothing is downloaded; weights are memory-mapped or read by their
headers, not loaded.

For each path it prints the kind and sizes read from the file, then whether zero-shot (ImageBind +
AnomalyGPT delta), few-shot (the same + normal reference images) and explain mode (+ LLM folder +
PandaGPT delta) are ready, whether the pieces fit (prompt width, llama_proj and LoRA vs the LLM's
hidden size, tokenizer vs embedding), and which evaluation protocol each AnomalyGPT delta suits.

Exit status: 0 when every path was recognised, 2 when any is missing or not a file this product reads
(one "error: ..." line each).

examples:
  anomalib-agpt check-weights imagebind_huge.pth train_visa/pytorch_model.pt \\
      pandagpt_7b_max_len_1024/pytorch_model.pt vicuna-7b-v0/
"""


@dataclass
class WeightReport:
    """What one path is: its kind and sizes, or why it is not a file this product reads."""

    given: str
    """The path as the user wrote it."""
    path: Path | None = None
    """Where it was found (a folder holding ``pytorch_model.pt`` becomes that file)."""
    kind: str | None = None
    """``IMAGEBIND``, ``ANOMALYGPT``, ``PANDAGPT``, ``LLM``, ``LIGHTNING``, or ``None`` when not recognised."""
    sizes: dict[str, Any] = field(default_factory=dict)
    """Numbers read from the file (widths, layers, ranks, vocabulary), by name."""
    details: list[str] = field(default_factory=list)
    """Human-readable lines."""
    error: str | None = None
    """Why the path is missing or not a file this product reads."""

    @property
    def label(self) -> str:
        """A short name: the file or folder name, with its folder for the released files' generic names."""
        path = Path(self.given)
        if path.name in _GENERIC_NAMES and path.parent.name:
            return f"{path.parent.name}/{path.name}"
        return path.name or self.given


@dataclass(frozen=True)
class Check:
    """One fit between pieces (or within one): whether it holds, in words, and which reports it concerns."""

    ok: bool
    text: str
    parts: frozenset[int] = frozenset()
    """Indices of the reports it concerns; a mode is ready when one file per kind passes all their checks."""


def _unreadable(reason: str) -> CheckpointError:
    return CheckpointError(f"not a weight file this product reads: {reason}")


# --------------------------------------------------------------------------------------------
# Reading without loading
# --------------------------------------------------------------------------------------------
def _torch_load(path: Path) -> object:
    """:func:`~anomalib_agpt.weights.checkpoints.read_torch_file`, pathlib objects in Lightning hparams allowed."""
    try:
        return ckpt.read_torch_file(path, ckpt.PATH_GLOBALS)
    except CheckpointError as error:
        raise _unreadable(str(error)) from error


def _safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"dtype", "shape", "data_offsets"}}`` from the header only."""
    try:
        return read_safetensors_header(path)[1]
    except CheckpointError as error:
        raise _unreadable(str(error)) from error


def _shape(values: Sequence[int]) -> str:
    return " x ".join(str(v) for v in values)


# --------------------------------------------------------------------------------------------
# The released files
# --------------------------------------------------------------------------------------------
def _describe_imagebind(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    sizes = ckpt.imagebind_sizes(state, path)
    ckpt.convert_imagebind(state, path)  # every vision/text key understood (the model's own check)
    report.kind = IMAGEBIND
    report.sizes = {
        "embed_dim": sizes.embed_dim,
        "vision_width": sizes.vision_width,
        "vision_layers": sizes.vision_layers,
        "patch_size": sizes.patch_size,
        "image_size": sizes.image_size,
        "text_width": sizes.text_width,
        "text_layers": sizes.text_layers,
        "text_vocab_size": sizes.vocab_size,
        "context_length": sizes.context_length,
    }
    report.details.append(
        f"{IMAGEBIND}: vision width {sizes.vision_width}, {sizes.vision_layers} blocks, patch {sizes.patch_size}, "
        f"image {sizes.image_size}; text width {sizes.text_width}, {sizes.text_layers} blocks; "
        f"joint embedding {sizes.embed_dim}",
    )
    if all(report.sizes[k] == v for k, v in HUGE.items()):
        report.details.append("ImageBind-Huge sizes (16 heads per tower: the defaults vision_heads/text_heads)")
    else:
        report.details.append("not ImageBind-Huge: head counts are not stored; pass vision_heads/text_heads")


def protocol_of(path: Path) -> str:
    """Which evaluation protocol an AnomalyGPT delta suits, told from its folder or file name only."""
    for name in (path.parent.name, path.stem):
        if name in PROTOCOLS:
            return f"{PROTOCOLS[name]} (told from the name {name})"
    return (
        "training data cannot be told (the file does not say; the released deltas are told apart only by their "
        f"folder names {', '.join(PROTOCOLS)})"
    )


def _describe_anomalygpt(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    decoder, prompt = ckpt.split_anomalygpt_delta(state, path)
    layers, in_width, out_dim = ckpt.decoder_sizes(decoder, path)
    report.kind = ANOMALYGPT
    report.sizes = {"decoder_layers": layers, "decoder_in": in_width, "decoder_out": out_dim}
    parts = f"decoder {layers} x Linear({in_width} -> {out_dim})"
    base = prompt.get("base_prompts")
    if base is not None:
        report.sizes |= {"base_prompts": base.shape[0], "prompt_width": base.shape[1]}
        parts += f" + prompt learner ({base.shape[0]} base prompts, width {base.shape[1]})"
    elif prompt:
        raise _unreadable(f"AnomalyGPT delta '{path}' has prompt_learner.* keys but no prompt_learner.base_prompts")
    else:
        parts += "; no prompt learner (enough for maps, not for explanations)"
    report.sizes["protocol"] = protocol_of(path)
    report.details.append(f"{ANOMALYGPT}: {parts}")


def _describe_pandagpt(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    from anomalib_agpt.explanation.lora import LORA_TARGETS, split_pandagpt_delta

    projection, lora = split_pandagpt_delta(state, path)
    out_features, in_features = projection["weight"].shape
    a_shapes = [tuple(v.shape) for k, v in lora.items() if ".lora_A." in k]
    ranks = sorted({shape[0] for shape in a_shapes})
    hidden = sorted({shape[1] for shape in a_shapes})
    layers = len({match[1] for key in lora if (match := _LORA_LAYER.match(key))})
    present = {k.split(".")[4] for k in lora}
    targets = [t.removesuffix("_proj") for t in LORA_TARGETS if t in present] + sorted(present - set(LORA_TARGETS))
    report.kind = PANDAGPT
    report.sizes = {
        "proj_in": in_features,
        "proj_out": out_features,
        "lora_rank": ranks[0] if len(ranks) == 1 else ranks,
        "lora_hidden": hidden[0] if len(hidden) == 1 else hidden,
        "lora_layers": layers,
    }
    report.details.append(
        f"{PANDAGPT}: llama_proj Linear({in_features} -> {out_features}); LoRA rank "
        f"{'/'.join(map(str, ranks))} on {'/'.join(targets)} of {layers} layers, hidden size "
        f"{'/'.join(map(str, hidden))}",
    )
    folder = path.parent.name
    if folder.startswith("pandagpt_") and folder != _RELEASED_PANDAGPT:
        report.details.append(f"AnomalyGPT's released deltas were trained with {_RELEASED_PANDAGPT}, not {folder}")


def _describe_state_dict(state: Mapping[str, torch.Tensor], path: Path, report: WeightReport) -> None:
    found = ckpt.identify(state)
    if found == ckpt.IMAGEBIND:
        _describe_imagebind(state, path, report)
    elif found == ckpt.ANOMALYGPT:
        _describe_anomalygpt(state, path, report)
    elif found == ckpt.PANDAGPT:
        _describe_pandagpt(state, path, report)
    elif any(k.startswith(("model.layers.", "model.embed_tokens.", "lm_head.")) for k in state):
        raise _unreadable("LLM weights on their own; pass the LLM folder that holds them with config.json")
    else:
        raise _unreadable(f"its keys look like no file the model reads ({ckpt._keys(state)})")


# --------------------------------------------------------------------------------------------
# Lightning checkpoints of this product
# --------------------------------------------------------------------------------------------
_RESTORED_KEYS = ("model.text_features", "model.reference_memory")
_WEIGHT_OPTIONS = ("imagebind_checkpoint", "anomalygpt_checkpoint", "llm", "pandagpt_checkpoint")


def _exists(value: object) -> bool:
    try:
        ckpt.resolve_weight_path(str(value), "check-weights")
    except MissingFileError:
        return False
    return True


def _describe_lightning(checkpoint: Mapping[str, Any], report: WeightReport) -> None:
    state = checkpoint.get("state_dict") or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    if "anomalygpt_class_name" not in checkpoint and not any(k in state for k in _RESTORED_KEYS):
        name = checkpoint.get("hparams_name") or "unknown"
        raise _unreadable(f"a Lightning checkpoint of another model (keys {ckpt._keys(state)}; hparams {name})")
    memory = state.get("model.reference_memory")
    trained = sorted(
        {".".join(k.split(".")[:2]) for k in state if k not in _RESTORED_KEYS and not k.startswith("post_processor.")},
    )
    report.kind = LIGHTNING
    report.sizes = {
        "class_name": checkpoint.get("anomalygpt_class_name"),
        "k_shot": hparams.get("k_shot"),
        "trained_parts": trained,
    }
    references = f" (reference memory {_shape(memory.shape)})" if memory is not None and memory.numel() else ""
    report.details.append(
        f"{LIGHTNING} of this product (AnomalyGPT): class '{report.sizes['class_name']}', "
        f"k_shot {report.sizes['k_shot']}{references}; trained parts: {', '.join(trained) or 'none'}",
    )
    if hparams.get("preset"):
        report.details.append(f"built from preset '{hparams['preset']}' (random weights, no files needed)")
        return
    needs = [
        f"{o}={hparams[o]} ({'found' if _exists(hparams[o]) else 'NOT FOUND'})"
        for o in _WEIGHT_OPTIONS
        if hparams.get(o)
    ]
    report.details.append("restores with " + (", ".join(needs) or "no weight files named"))


# --------------------------------------------------------------------------------------------
# LLMs
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# One path
# --------------------------------------------------------------------------------------------
def _describe_file(path: Path, report: WeightReport) -> None:
    if path.suffix == ".gguf":
        _describe_gguf(path, report)
        return
    if path.suffix == ".safetensors":
        found = ckpt.identify(dict.fromkeys(_safetensors_header(path)))  # type: ignore[arg-type]
        if (path.parent / "config.json").is_file():
            raise _unreadable(f"one weight file of the LLM folder '{path.parent}'; pass the folder")
        looks = f"; it looks like {found}, which the model reads as a .pt/.pth PyTorch file" if found else ""
        raise _unreadable(f"a safetensors file outside an LLM folder{looks}")
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        _describe_state_dict(obj, path, report)
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        _describe_lightning(obj, report)
    else:
        if isinstance(obj, Mapping):
            kinds = sorted({type(v).__name__ for v in obj.values()})
            what = f"a dict of {', '.join(kinds)}" if obj else "an empty dict"
        else:
            what = f"a {type(obj).__name__}"
        raise _unreadable(f"a PyTorch file holding {what}, not a dict of tensors nor a Lightning checkpoint")


def describe(given: str | Path) -> WeightReport:
    """Say what one path is (kind and sizes), or why it is missing or not a file this product reads."""
    report = WeightReport(str(given))
    try:
        path = ckpt.resolve_weight_path(given, "check-weights")
        report.path = path
        if path != Path(given).expanduser():
            report.details.append(f"found at {path}")
        if path.is_dir():
            if (path / "config.json").is_file():
                _describe_llm_folder(path, report)
                return report
            inner = path / "pytorch_model.pt"
            if not inner.is_file():
                raise _unreadable("a folder without config.json (not an LLM folder) and without pytorch_model.pt")
            report.path = path = inner
            report.details.append(f"reading {inner.name} in the folder")
        _describe_file(path, report)
    except MissingFileError as error:
        report.kind, report.error = None, str(error)
    except AnomalyGPTError as error:
        report.kind, report.error = None, f"{given}: {error}"
    except OSError as error:
        report.kind, report.error = None, f"{given}: cannot be read ({first_line(error)})"
    except (
        AttributeError,
        KeyError,
        IndexError,
        TypeError,
        ValueError,
    ) as error:  # a known key with an unexpected layout
        report.kind, report.error = None, f"{given}: {_unreadable(f'unexpected contents ({first_line(error)})')}"
    return report


# --------------------------------------------------------------------------------------------
# The set
# --------------------------------------------------------------------------------------------
def _indexed(reports: Sequence[WeightReport], kind: str) -> list[tuple[int, WeightReport]]:
    return [(i, r) for i, r in enumerate(reports) if r.kind == kind]


def _llm_checks(index: int, llm: WeightReport) -> list[Check]:
    s, name, parts = llm.sizes, llm.label, frozenset({index})
    checks = []
    if s["embedding_width"] is None:
        text = f"{name}: no input embedding (*embed_tokens.weight) found in the weights"
        checks.append(Check(ok=False, text=text, parts=parts))
    elif s["hidden_size"] != s["embedding_width"]:
        text = f"{name}: config hidden size {s['hidden_size']} vs embedding width {s['embedding_width']}"
        checks.append(Check(ok=False, text=text, parts=parts))
    tokens, rows = s.get("tokenizer_size"), s["embedding_rows"]
    if tokens is None:
        checks.append(Check(ok=False, text=f"{name}: tokenizer missing ({s.get('tokenizer_problem')})", parts=parts))
    elif rows is not None:
        ok = tokenizer_fits(tokens, rows, s["gguf"])
        hint = "" if ok else f" ({VOCAB_HINT})"
        checks.append(
            Check(ok=ok, text=f"{name}: tokenizer {tokens} tokens vs embedding {rows} rows{hint}", parts=parts)
        )
    if tokens is not None and not s.get("stop_piece"):
        text = f"{name}: no chat template and no piece '{STOP_PIECE}' to end a turn on"
        checks.append(Check(ok=False, text=text, parts=parts))
    return checks


def fit_checks(reports: Sequence[WeightReport]) -> list[Check]:
    """Every check between recognised pieces (and within one), as the model makes them when it loads them."""
    checks: list[Check] = []
    imagebinds, deltas = _indexed(reports, IMAGEBIND), _indexed(reports, ANOMALYGPT)
    pandagpts, llms = _indexed(reports, PANDAGPT), _indexed(reports, LLM)
    for i, ib in imagebinds:
        width, embed = ib.sizes["vision_width"], ib.sizes["embed_dim"]
        for j, ag in deltas:
            got = (ag.sizes["decoder_layers"], ag.sizes["decoder_in"], ag.sizes["decoder_out"])
            text = (
                f"{ag.label} decoder {got[0]} x Linear({got[1]} -> {got[2]}) vs {ib.label} "
                f"(needs {NUM_TAPS} x Linear({width} -> {embed}))"
            )
            checks.append(Check(ok=got == (NUM_TAPS, width, embed), text=text, parts=frozenset({i, j})))
        for j, pg in pandagpts:
            text = f"{pg.label} llama_proj input {pg.sizes['proj_in']} vs {ib.label} joint embedding {embed}"
            checks.append(Check(ok=pg.sizes["proj_in"] == embed, text=text, parts=frozenset({i, j})))
    for j, pg in pandagpts:
        if isinstance(pg.sizes["lora_rank"], list):
            text = f"{pg.label}: LoRA ranks differ between layers {pg.sizes['lora_rank']}"
            checks.append(Check(ok=False, text=text, parts=frozenset({j})))
    for i, llm in llms:
        hidden, layers = llm.sizes["hidden_size"], llm.sizes["num_layers"]
        for j, ag in deltas:
            if "prompt_width" in ag.sizes:
                text = f"{ag.label} prompt width {ag.sizes['prompt_width']} vs {llm.label} hidden size {hidden}"
                checks.append(Check(ok=ag.sizes["prompt_width"] == hidden, text=text, parts=frozenset({i, j})))
        for j, pg in pandagpts:
            s = pg.sizes
            for text, ok in (
                (f"llama_proj output {s['proj_out']} vs {llm.label} hidden size {hidden}", s["proj_out"] == hidden),
                (
                    f"LoRA hidden size {s['lora_hidden']} vs {llm.label} hidden size {hidden}",
                    s["lora_hidden"] == hidden,
                ),
                (f"LoRA on {s['lora_layers']} layers vs {llm.label} {layers} layers", s["lora_layers"] == layers),
            ):
                checks.append(Check(ok=ok, text=f"{pg.label} {text}", parts=frozenset({i, j})))
        checks += _llm_checks(i, llm)
    return checks


_NEEDED = {
    IMAGEBIND: f"{IMAGEBIND} (imagebind_huge.pth)",
    ANOMALYGPT: f"{ANOMALYGPT} (train_*/pytorch_model.pt)",
    PANDAGPT: f"{PANDAGPT} ({_RELEASED_PANDAGPT}/pytorch_model.pt)",
    LLM: "LLM folder (Vicuna-7B v0)",
}


def _mode(reports: Sequence[WeightReport], checks: Sequence[Check], kinds: Sequence[str], explain: bool) -> str:
    """Ready (with the files used) when one file of each kind fits the others; else what is missing or does not fit."""
    pools, missing = [], []
    for kind in kinds:
        pool = [
            i for i, r in _indexed(reports, kind) if not (explain and kind == ANOMALYGPT) or "prompt_width" in r.sizes
        ]
        if not pool:
            absent = explain and kind == ANOMALYGPT and _indexed(reports, kind)
            missing.append(f"{ANOMALYGPT} with a prompt learner" if absent else _NEEDED[kind])
        pools.append(pool)
    if missing:
        return "missing " + ", ".join(missing)
    for combination in itertools.product(*pools):
        chosen = frozenset(combination)
        if all(c.ok for c in checks if c.parts <= chosen):
            return f"ready ({' + '.join(reports[i].label for i in combination)})"
    return "not ready: the pieces do not fit (DOES NOT FIT above)"


def mode_status(reports: Sequence[WeightReport], checks: Sequence[Check]) -> dict[str, str]:
    """``zero-shot``, ``few-shot`` and ``explain``: ready (with which files), what is missing, or no fit."""
    zero = _mode(reports, checks, (IMAGEBIND, ANOMALYGPT), explain=False)
    references = "; plus normal reference images (k_shot=N: the first N train images, or few_shot_source)"
    return {
        "zero-shot": zero,
        "few-shot": zero + references if zero.startswith("ready") else zero,
        "explain": _mode(reports, checks, (IMAGEBIND, ANOMALYGPT, PANDAGPT, LLM), explain=True),
    }


def render(reports: Sequence[WeightReport]) -> tuple[list[str], list[str]]:
    """``(stdout lines, error lines)`` of a run over ``reports``."""
    lines: list[str] = []
    errors = [f"error: {r.error}" for r in reports if r.error]
    for report in reports:
        if report.kind is not None:
            lines.append(report.given)
            lines += [f"  {line}" for line in report.details]
    checks = fit_checks(reports)
    if checks:
        lines.append("Fit")
        lines += [f"  {'ok' if c.ok else 'DOES NOT FIT':12} {c.text}" for c in checks]
    lines.append("Modes")
    lines += [f"  {mode + ':':10} {text}" for mode, text in mode_status(reports, checks).items()]
    deltas = _indexed(reports, ANOMALYGPT)
    if deltas:
        lines.append("Protocol")
        lines += [f"  {r.label}: {r.sizes['protocol']}" for _, r in deltas]
    return lines, errors


def parse_args(argv: Sequence[str]) -> list[str]:
    """The paths to check (``--help`` describes the command)."""
    from jsonargparse import ArgumentParser

    from anomalib_agpt.apps.options import HelpFormatter

    parser = ArgumentParser(prog="anomalib-agpt check-weights", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="weight files and folders to check (any order, any number)",
    )
    return list(parser.parse_args(list(argv)).paths)


def main(argv: Sequence[str]) -> int:
    """Check each path, print what it is and the summary; return 0 if all were recognised, else 2."""
    try:
        paths = parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    reports = [describe(path) for path in paths]
    lines, errors = render(reports)
    sys.stdout.write("\n".join(lines) + "\n")
    if errors:
        sys.stdout.flush()
        sys.stderr.write("\n".join(errors) + "\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
