"""Checks across files: whether the recognised pieces fit together, and which modes they make ready.

The checks are the ones the model makes when it loads the pieces: prompt width, ``llama_proj`` and LoRA
against the LLM's hidden size, the decoder against ImageBind, the tokenizer against the embedding.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from anomalib_agpt.apps.check_weights.report import (
    _RELEASED_PANDAGPT,
    ANOMALYGPT,
    IMAGEBIND,
    LLM,
    PANDAGPT,
    Check,
    WeightReport,
)
from anomalib_agpt.explanation.conversation import TURN_END
from anomalib_agpt.explanation.llm_loading import VOCAB_HINT, tokenizer_fits
from anomalib_agpt.weights.checkpoints import NUM_TAPS


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
        text = f"{name}: no chat template and no token to end a turn on after the newline of {TURN_END!r}"
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
