"""Memory a load adds, measured in a fresh process (the tests' and the benchmarks' one probe).

The child imports what it needs and warms up first, then reads ``/proc/self/status`` around the load:
``VmHWM`` (peak resident; not ``ru_maxrss``, which Linux carries over from the parent through fork + exec)
and ``RssAnon`` (anonymous memory: what a load copies, unlike the file pages a memory map shares).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_STATUS = """
import re
def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
"""

LLM_LOAD = (
    _STATUS
    + """
import json, pathlib, sys, torch
from anomalib_agpt.explanation.llm_loading import load_llm
load_llm(pathlib.Path(sys.argv[3]), torch.float32)  # warm-up: transformers imports its model code lazily
rss, anon = status("VmRSS"), status("RssAnon")
model = load_llm(pathlib.Path(sys.argv[1]), getattr(torch, sys.argv[2]))
print(json.dumps({"peak_added": status("VmHWM") - rss, "anon_added": status("RssAnon") - anon,
                  "params": sum(p.numel() for p in model.parameters())}))
"""
)
"""argv: LLM folder, torch dtype name, a tiny LLM folder for the warm-up."""

ANOMALYGPT_BUILD = (
    _STATUS
    + """
import json, sys
from anomalib_agpt.model.torch_model import AnomalyGPTModel
heads = int(sys.argv[3]), int(sys.argv[4])
rss, anon = status("VmRSS"), status("RssAnon")
model = AnomalyGPTModel.from_files(sys.argv[1], sys.argv[2], vision_heads=heads[0], text_heads=heads[1])
print(json.dumps({"peak_added": status("VmHWM") - rss, "anon_added": status("RssAnon") - anon,
                  "params": sum(p.numel() for p in model.parameters())}))
"""
)
"""argv: ImageBind file, AnomalyGPT delta, vision heads, text heads."""


def added_by(child: str, *argv: str | Path) -> dict[str, int]:
    """Run ``child`` (:data:`LLM_LOAD` or :data:`ANOMALYGPT_BUILD`) in a fresh Python; its figures in bytes."""
    command = [sys.executable, "-c", child, *map(str, argv)]
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(output.stdout.strip().splitlines()[-1])
