"""PandaGPT's LoRA on the LLM's q/k/v/o projections through peft: read from the delta, attach, merge."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from anomalib_agpt.weights import checkpoints as ckpt

_LORA_KEY = re.compile(
    r"^llama_model\.base_model\.model\.(?P<module>model\.layers\.\d+\.self_attn\.[qkvo]_proj)"
    r"\.(?P<part>lora_[AB])(?:\.default)?\.weight$",
)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_DROPOUT = 0.1
"""PandaGPT's LoRA dropout: active only in training mode (inference, eval mode, never drops)."""


def split_pandagpt_delta(
    state: Mapping[str, torch.Tensor],
    source: Path | str,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(llama_proj, lora)``: lora keys as ``model.layers.N.self_attn.X_proj.lora_A.weight``."""
    projection = {k.removeprefix("llama_proj."): v for k, v in state.items() if k.startswith("llama_proj.")}
    lora, unknown = {}, []
    for key, value in state.items():
        if key.startswith("llama_proj."):
            continue
        match = _LORA_KEY.match(key)
        if match is None:
            unknown.append(key)
        else:
            lora[f"{match['module']}.{match['part']}.weight"] = value
    if unknown:
        msg = f"PandaGPT delta '{source}' has unexpected keys: {ckpt._keys(unknown)}"
        raise ckpt.CheckpointError(msg)
    if set(projection) != {"weight", "bias"} or not lora:
        msg = f"PandaGPT delta '{source}' needs llama_proj.weight, llama_proj.bias and LoRA weights."
        raise ckpt.CheckpointError(msg)
    return projection, lora


def _inject_keeping_mode(config: object, llm: nn.Module) -> None:
    """Inject peft's LoRA with its new modules (the dropouts) in the LLM's own mode: an eval LLM never drops out."""
    from peft import inject_adapter_in_model

    training = llm.training
    inject_adapter_in_model(config, llm)
    llm.train(training)


def attach_lora(llm: nn.Module, lora: Mapping[str, torch.Tensor], scale: float, source: Path | str) -> None:
    """Put the PandaGPT LoRA on q/k/v/o of every layer with peft and load it strictly."""
    from peft import LoraConfig

    ranks = {v.shape[0] for k, v in lora.items() if ".lora_A." in k}
    if len(ranks) != 1:
        msg = f"PandaGPT delta '{source}': LoRA ranks differ between layers: {sorted(ranks)}"
        raise ckpt.CheckpointError(msg)
    rank = ranks.pop()
    hidden = llm.get_input_embeddings().weight.shape[1]
    some_a = next(v for k, v in lora.items() if ".lora_A." in k)
    if some_a.shape[1] != hidden:
        msg = f"PandaGPT delta '{source}' holds LoRA for hidden size {some_a.shape[1]}; the LLM's is {hidden}."
        raise ckpt.CheckpointError(msg)
    config = LoraConfig(r=rank, lora_alpha=rank * scale, lora_dropout=LORA_DROPOUT, target_modules=list(LORA_TARGETS))
    _inject_keeping_mode(config, llm)
    own = {k.replace(".default.", "."): k for k in llm.state_dict() if ".lora_" in k}
    missing, unexpected = set(own) - set(lora), set(lora) - set(own)
    if missing or unexpected:
        msg = (
            f"PandaGPT delta '{source}' does not match the LLM's layers: missing {ckpt._keys(missing)}; "
            f"unexpected {ckpt._keys(unexpected)}"
        )
        raise ckpt.CheckpointError(msg)
    parameters = dict(llm.named_parameters())
    with torch.no_grad():
        for key, value in lora.items():
            target = parameters[own[key]]
            if target.shape != value.shape:
                msg = f"PandaGPT delta '{source}': {key} is {tuple(value.shape)}, the LLM needs {tuple(target.shape)}"
                raise ckpt.CheckpointError(msg)
            target.copy_(value)
    llm.requires_grad_(False)


def attach_fresh_lora(llm: nn.Module, rank: int, scale: float) -> None:
    """A new LoRA on q/k/v/o (B = 0, so the LLM starts unchanged) for training a small LLM."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=rank * scale, lora_dropout=LORA_DROPOUT, target_modules=list(LORA_TARGETS))
    _inject_keeping_mode(config, llm)
    llm.requires_grad_(False)


def merge_lora(llm: nn.Module) -> None:
    """Fold the LoRA into the base weights and put the plain layers back (rounds in the LLM's dtype).

    Each q/k/v/o becomes its base ``nn.Linear`` with ``W + B A * alpha / r``: no adapter runs at inference.
    """
    from peft.tuners.lora import LoraLayer

    for parent in list(llm.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
