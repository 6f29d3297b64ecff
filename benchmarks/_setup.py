"""Shared set-up of the benchmarks: the reference set, random models of other sizes, and the round-robin timer."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from anomalib_agpt.model.presets import PresetSizes
    from anomalib_agpt.model.torch_model import AnomalyGPTModel

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "anomalygpt_reference"
TINY_HEADS = {"vision_heads": 4, "text_heads": 2}
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))


def fixture_weights() -> dict:
    """The reference set's weight files (tiny ImageBind, decoder, prompt learner, LLaMA, LoRA)."""
    return {
        "imagebind_checkpoint": str(FIXTURES / "imagebind.pth"),
        "anomalygpt_checkpoint": str(FIXTURES / "anomalygpt_delta.pt"),
        "llm": str(FIXTURES / "vicuna"),
        "pandagpt_checkpoint": str(FIXTURES / "pandagpt_delta.pt"),
        **TINY_HEADS,
    }


def random_llm_weights(folder: Path, hidden: int, layers: int, heads: int, mlp: int, seed: int = 0) -> dict:
    """The reference set's ImageBind and decoder with a random LLaMA of the given size and its deltas."""
    from anomalib_agpt.model.presets import (
        LlamaSizes,
        random_pandagpt_delta,
        random_prompt_learner_delta,
        write_random_llama,
    )

    sizes = LlamaSizes(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=mlp, vocab_size=421)
    folder.mkdir(parents=True, exist_ok=True)
    llm = write_random_llama(folder / "llm", sizes, FIXTURES / "vicuna", seed)
    reference = torch.load(FIXTURES / "anomalygpt_delta.pt", weights_only=True)
    decoder = {k: v for k, v in reference.items() if k.startswith("image_decoder.")}
    torch.save(decoder | random_prompt_learner_delta(hidden, seed), folder / "anomalygpt_delta.pt")
    torch.save(random_pandagpt_delta(32, sizes, seed), folder / "pandagpt_delta.pt")
    return {
        "imagebind_checkpoint": str(FIXTURES / "imagebind.pth"),
        "anomalygpt_checkpoint": str(folder / "anomalygpt_delta.pt"),
        "llm": str(llm),
        "pandagpt_checkpoint": str(folder / "pandagpt_delta.pt"),
        **TINY_HEADS,
    }


VISION_SIZES = {"small": (768, 12, 12), "huge": (1280, 32, 16)}
"""``--size`` choices of the encoder benchmarks: (width, layers, heads); ``huge`` is ImageBind-Huge's vision tower."""


def vision_sizes(size: str) -> PresetSizes:
    """``PresetSizes`` of ``VISION_SIZES[size]`` (224 px, patch 14) with a tiny text tower (2 heads)."""
    from anomalib_agpt.model.presets import PresetSizes

    width, layers, heads = VISION_SIZES[size]
    return PresetSizes(
        vision_width=width,
        vision_layers=layers,
        vision_heads=heads,
        text_width=64,
        text_layers=2,
        text_heads=2,
        embed_dim=1024 if size == "huge" else 512,
    )


def random_sized_model(size: str, seed: int = 0) -> AnomalyGPTModel:
    """An ``AnomalyGPTModel``: random vision tower of ``VISION_SIZES[size]`` (224 px, patch 14), tiny text tower."""
    from anomalib_agpt.model.presets import random_anomalygpt_delta, random_imagebind_state_dict
    from anomalib_agpt.model.torch_model import AnomalyGPTModel

    sizes = vision_sizes(size)
    model = AnomalyGPTModel.from_state_dicts(
        random_imagebind_state_dict(sizes, seed),
        random_anomalygpt_delta(sizes, seed),
        vision_heads=sizes.vision_heads,
        text_heads=sizes.text_heads,
    )
    model.set_class_name("bottle")
    return model.eval()


def random_sized_weights(size: str, folder: Path, seed: int = 0) -> dict:
    """``AnomalyGPT`` keyword arguments of ``random_sized_model``'s weights, written as the original files.

    For benchmarks of the Lightning module (export, pre-/post-processing), which loads from files.
    """
    from anomalib_agpt.model.presets import random_anomalygpt_delta, random_imagebind_state_dict

    sizes = vision_sizes(size)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(random_imagebind_state_dict(sizes, seed), folder / "imagebind.pth")
    torch.save(random_anomalygpt_delta(sizes, seed), folder / "anomalygpt_delta.pt")
    return {
        "imagebind_checkpoint": str(folder / "imagebind.pth"),
        "anomalygpt_checkpoint": str(folder / "anomalygpt_delta.pt"),
        "vision_heads": sizes.vision_heads,
        "text_heads": sizes.text_heads,
    }


@dataclass(frozen=True)
class Timing:
    """One contender's timed rounds in seconds: the median is the figure; min and max show how far load moved it."""

    seconds: tuple[float, ...]
    result: object = None
    """What the contender's last timed call returned (answers, maps, rows), so no extra call is needed to check it."""

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.seconds)

    @property
    def low(self) -> float:
        """Fastest round."""
        return min(self.seconds)

    @property
    def high(self) -> float:
        """Slowest round."""
        return max(self.seconds)

    def ms(self, per: int = 1) -> str:
        """``median ms (min-max)``, per item where one call handles ``per`` items."""
        scale = 1000 / per
        return f"{self.median * scale:8.1f} ms (min-max {self.low * scale:.1f}-{self.high * scale:.1f})"

    def rate(self, items: int, unit: str = "img/s") -> str:
        """``median items/s (min-max)`` where one call handles ``items``; the slowest round is the minimum."""
        return f"{items / self.median:8.2f} {unit} (min-max {items / self.high:.2f}-{items / self.low:.2f})"


def round_robin(
    contenders: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], object] | None = None,
    self_timed: bool = False,
) -> dict[str, Timing]:
    """Time the contenders interleaved (A, B, A, B, ... for ``rounds``), so a change of machine load hits all alike.

    ``warmup`` untimed rounds go first (lazy initialisation, caches, allocator). ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs inside each timing so that queued GPU work counts. With
    ``self_timed`` each contender returns its own seconds, for work the wall clock would mix with
    set-up (vs_patchcore: test batches without the fit and the data loading).
    """
    if rounds < 1:
        msg = f"rounds={rounds}: need at least one timed round"
        raise ValueError(msg)
    for _ in range(warmup):
        for function in contenders.values():
            function()
            if sync is not None:
                sync()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict[str, object] = {}
    for _ in range(rounds):
        for name, function in contenders.items():
            start = time.perf_counter()
            results[name] = function()
            if sync is not None:
                sync()
            seconds[name].append(float(results[name]) if self_timed else time.perf_counter() - start)
    return {name: Timing(tuple(spent), results[name]) for name, spent in seconds.items()}


def busy_cpus(seconds: float = 0.5) -> float | None:
    """CPUs other processes keep busy, sampled from ``/proc/stat`` while this one sleeps; None without procfs.

    Unlike the load average, this leaves out this run's own work (set-up, export, threads still spinning).
    """

    def ticks() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy, total = ticks()
        own, start = os.times(), time.monotonic()
        time.sleep(seconds)
        busy_after, total_after = ticks()
        own_after, elapsed = os.times(), time.monotonic() - start
    except (OSError, ValueError, IndexError):
        return None
    cpus = os.cpu_count() or 1
    mine = (own_after.user + own_after.system - own.user - own.system) / max(elapsed, 1e-9)
    return max(cpus * (busy_after - busy) / max(total_after - total, 1) - mine, 0.0)


def rounds_note(rounds: int, warmup: int) -> str:
    """How the figures were taken and how busy the machine was just before (call it before timing).

    On a busy CPU, torch's threads wait for each other at every op (a thread the OS put aside stalls
    the op): tiny ops then cost milliseconds and ratios drift far off; one thread each avoids it.
    """
    cpus, threads, others = os.cpu_count() or 1, torch.get_num_threads(), busy_cpus()
    note = f"median of {rounds} round-robin rounds after {warmup} warm-up round(s); {threads} torch threads, "
    if others is None:
        return note + f"load average {os.getloadavg()[0]:.1f} on {cpus} CPUs"
    note += f"other processes busy on {others:.1f} of {cpus} CPUs"
    if threads > 1 and others + threads > cpus + 0.25:
        note += " (BUSY: threads stall each other; OMP_NUM_THREADS=1 gives steadier ratios)"
    return note


def synchronizer(device: str | torch.device) -> Callable[[], object] | None:
    """``round_robin``'s ``sync`` for ``device``: wait for CUDA's queued work, nothing elsewhere."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
