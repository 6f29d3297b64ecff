"""Load a causal LM in the requested dtype adding about one copy of its weights to memory.

``from_pretrained`` maps the safetensors file and copies out of the mapping, so the mapped pages
and the parameters are both resident at the peak (about twice the file). Here the model is built
without initialising its weights, and each tensor is read from the file straight into its
parameter with ordinary reads (the page cache is not the process's memory); a dtype change goes
through one tensor-sized buffer. Folders with only ``pytorch_model*.bin`` use ``from_pretrained``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from anomalib_agpt.model.checkpoints import CheckpointError

_SAFETENSORS_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _no_init_weights() -> object:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def _safetensors_entries(path: Path) -> Iterator[tuple[str, torch.dtype, list[int], int, int]]:
    """``(name, dtype, shape, start, end)`` per tensor; offsets are absolute in the file."""
    # Not ``safetensors.safe_open``: it maps the whole shard and keeps every touched page resident until it
    # closes, so a load peaks at 2.00x the fp16 file against 1.00x here (measured, 305M-parameter LLaMA).
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            msg = f"llm: '{path}' stores {name} as {entry['dtype']}, which this loader does not read."
            raise CheckpointError(msg)
        start, end = entry["data_offsets"]
        yield name, dtype, entry["shape"], 8 + length + start, 8 + length + end


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
                for name, file_dtype, shape, start, end in _safetensors_entries(path):
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
    pointers = {targets[name].data_ptr() for name in loaded}
    missing = sorted(k for k, v in targets.items() if k not in loaded and v.data_ptr() not in pointers)
    if missing or unexpected:
        msg = (
            f"llm: '{folder}' does not match its config: missing {missing or 'nothing'}; "
            f"unexpected {unexpected or 'nothing'}"
        )
        raise CheckpointError(msg)
    model.tie_weights()
    return model
