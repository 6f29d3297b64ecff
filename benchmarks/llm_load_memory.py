"""RSS that loading the LLM adds, relative to its fp16 file size (goal: <= 1.3x).

    python benchmarks/llm_load_memory.py [--hidden 1024 --layers 24]

Writes a random LLaMA of a few hundred million parameters in fp16, then loads it in a fresh
process through the product's loader (``llm_dtype='fp16'``: straight to half precision, no fp32
copy) and reports (peak RSS - RSS just before loading) / file size. For contrast it also loads
in fp32 (expected ~2x). Last line is the figure.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _setup import FIXTURES

from tests.memory_probe import LLM_LOAD, added_by


def load_cost(folder: Path, dtype: str) -> dict:
    """Bytes a load adds in a fresh process (imports and a tiny warm-up load done before measuring)."""
    return added_by(LLM_LOAD, folder, dtype, FIXTURES / "vicuna")


def main() -> None:
    """Write the random LLM, load it twice, print the ratios."""
    from anomalib_agpt.model.presets import LlamaSizes, write_random_llama

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    args = parser.parse_args()
    sizes = LlamaSizes(args.hidden, args.layers, args.hidden // 64, int(args.hidden * 2.6875), vocab_size=421)
    with tempfile.TemporaryDirectory() as folder:
        llm = write_random_llama(Path(folder) / "llm", sizes, FIXTURES / "vicuna", seed=0)
        file_bytes = sum(p.stat().st_size for p in llm.glob("*.safetensors"))
        half = load_cost(llm, "float16")
        full = load_cost(llm, "float32")
    print(f"LLM: {half['params'] / 1e6:.0f}M parameters, fp16 file {file_bytes / 2**20:.0f} MiB")
    print(f"load in fp32: adds {full['peak_added'] / 2**20:.0f} MiB = {full['peak_added'] / file_bytes:.2f}x the file")
    added = half["peak_added"]
    print(f"LLM load in fp16 adds {added / 2**20:.0f} MiB = {added / file_bytes:.2f}x its fp16 file size")


if __name__ == "__main__":
    main()
