"""RSS that loading the LLM adds, relative to its fp16 file size (goal: <= 1.3x).

    python benchmarks/llm_load_memory.py [--hidden 1024 --layers 24]

Writes a random LLaMA of a few hundred million parameters in fp16, then loads it in a fresh
process through the product's loader (``llm_dtype='fp16'``: straight to half precision, no fp32
copy) and reports (peak RSS - RSS just before loading) / file size. For contrast it also loads
in fp32 (expected ~2x). Last line is the figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _setup import FIXTURES

CHILD = """
import json, re, sys, pathlib, psutil, torch
from anomalib_agpt.explanation.llm_loading import load_llm
load_llm(pathlib.Path(sys.argv[3]), torch.float32)  # warm-up: transformers imports its model code lazily
before = psutil.Process().memory_info().rss
model = load_llm(__import__('pathlib').Path(sys.argv[1]), getattr(torch, sys.argv[2]))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork + exec
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"added": peak - before, "params": sum(p.numel() for p in model.parameters())}))
"""


def load_cost(folder: Path, dtype: str) -> dict:
    """Bytes a load adds in a fresh process (imports and a tiny warm-up load done before measuring)."""
    command = [sys.executable, "-c", CHILD, str(folder), dtype, str(FIXTURES / "vicuna")]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


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
    print(f"load in fp32: adds {full['added'] / 2**20:.0f} MiB = {full['added'] / file_bytes:.2f}x the file")
    print(
        f"LLM load in fp16 adds {half['added'] / 2**20:.0f} MiB = {half['added'] / file_bytes:.2f}x its fp16 file size"
    )


if __name__ == "__main__":
    main()
