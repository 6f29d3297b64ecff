"""The ``anomalib-agpt check-weights`` command line: its help, the printed summary and the exit status."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from anomalib_agpt.apps.check_weights.fit import _indexed, fit_checks, mode_status
from anomalib_agpt.apps.check_weights.recognise import describe
from anomalib_agpt.apps.check_weights.report import ANOMALYGPT, WeightReport

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
