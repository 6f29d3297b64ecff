"""What loading weights costs in memory, on small files: one copy of an LLM, none of a memory-mapped ImageBind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from anomalib_agpt.model.presets import (
    LlamaSizes,
    PresetSizes,
    random_anomalygpt_delta,
    random_imagebind_state_dict,
    write_random_llama,
)

from .conftest import FIXTURES
from .memory_probe import ANOMALYGPT_BUILD, LLM_LOAD, added_by

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_an_llm_loads_in_fp16_with_one_copy_of_its_file(tmp_path: Path) -> None:
    """A safetensors folder streamed into place in its own dtype: peak RSS added <= 1.3x the file (one copy)."""
    sizes = LlamaSizes(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048, vocab_size=421)
    folder = write_random_llama(tmp_path / "llm", sizes, FIXTURES / "vicuna", seed=0)
    file_bytes = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    assert file_bytes > 150 * 2**20  # large enough that a process's fixed costs do not decide the ratio
    cost = added_by(LLM_LOAD, folder, "float16", FIXTURES / "vicuna")
    assert cost["params"] * 2 <= file_bytes
    assert cost["peak_added"] / file_bytes <= 1.3, cost  # a second copy (from_pretrained's path) would be ~2x


def test_imagebind_builds_memory_mapped_without_copying_its_weights(tmp_path: Path) -> None:
    """Towers built on ``meta`` and assigned the mapped tensors: the file's pages are shared, not copied."""
    sizes = PresetSizes(
        vision_width=512, vision_layers=8, vision_heads=8, text_width=256, text_layers=4, text_heads=4, embed_dim=256
    )
    imagebind = tmp_path / "imagebind.pth"
    torch.save(random_imagebind_state_dict(sizes, seed=0), imagebind)
    delta = tmp_path / "delta.pt"
    torch.save(random_anomalygpt_delta(sizes, seed=0), delta)
    file_bytes = imagebind.stat().st_size
    assert file_bytes > 150 * 2**20
    cost = added_by(ANOMALYGPT_BUILD, imagebind, delta, sizes.vision_heads, sizes.text_heads)
    # anonymous memory: the decoder and text features only, not the towers (a copy would add the whole file)
    assert cost["anon_added"] < 0.25 * file_bytes, cost
