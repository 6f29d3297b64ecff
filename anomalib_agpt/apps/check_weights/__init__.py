"""``anomalib-agpt check-weights``: say what each weight file or folder is, and whether the set is complete and fits.

Recognition is the product's own (:mod:`anomalib_agpt.weights.checkpoints`, the PandaGPT delta split of
:mod:`anomalib_agpt.explanation.lora`, the tokenizer loading of :mod:`anomalib_agpt.explanation.llm_loading`),
so a file this command accepts is a file the model accepts in that slot. Weights are not loaded into
memory: PyTorch files are memory-mapped (``weights_only=True``; only legacy pre-zip files, which cannot
be mapped, are read whole), safetensors and GGUF files are read for their headers, LLM folders for
``config.json``, the embedding's shape and the tokenizer.

The readers of one path: :mod:`.recognise` (which reader a path goes to), :mod:`.released_files`
(ImageBind, AnomalyGPT and PandaGPT deltas), :mod:`.lightning_checkpoints`, :mod:`.llm_weights` (LLM
folders, GGUF), on :mod:`.reading` and :mod:`.report`. Across files: :mod:`.fit` (fit checks, modes)
and :mod:`.command` (the printed summary and the command line).
"""

from __future__ import annotations

from anomalib_agpt.apps.check_weights.command import DESCRIPTION, main, parse_args, render
from anomalib_agpt.apps.check_weights.fit import fit_checks, mode_status
from anomalib_agpt.apps.check_weights.recognise import describe
from anomalib_agpt.apps.check_weights.released_files import HUGE, PROTOCOLS, protocol_of
from anomalib_agpt.apps.check_weights.report import (
    ANOMALYGPT,
    IMAGEBIND,
    LIGHTNING,
    LLM,
    PANDAGPT,
    Check,
    WeightReport,
)

__all__ = [
    "ANOMALYGPT",
    "DESCRIPTION",
    "HUGE",
    "IMAGEBIND",
    "LIGHTNING",
    "LLM",
    "PANDAGPT",
    "PROTOCOLS",
    "Check",
    "WeightReport",
    "describe",
    "fit_checks",
    "main",
    "mode_status",
    "parse_args",
    "protocol_of",
    "render",
]
