"""``anomalib-agpt leaderboard``: rank AnomalyGPT and anomalib models on the same data, categories and seeds.

Every cell (model, category, seed) runs through anomalib's ``Engine`` (``fit`` with the datamodule
passed by keyword, then ``test``) with an ``Evaluator`` holding the model's own test metrics plus
``AUPRO``. Results are appended to ``results.csv`` cell by cell, so an interrupted run resumes: cells
already recorded as ``ok`` or ``skipped`` are not run again, ``failed`` ones are retried.

Offline rule (a fixed table, :data:`DOWNLOAD_NEEDS`): models whose weights anomalib downloads and that
cannot run without them (EfficientAd's teacher + Imagenette, WinClip's CLIP, Dinomaly's DINOv2) are
skipped with the reason recorded unless their files are already on disk (EfficientAd) or the machine
may download (``HF_HUB_OFFLINE`` unset; no host is probed, a failed download is recorded as failed).
Models whose constructor takes ``pre_trained`` get ``pre_trained=False`` and are marked "random
backbone". Without AnomalyGPT weights the ``random-small`` preset is used and marked "random weights".

Memory: ``peak_rss_mb`` is the rise of the process's peak RSS during the cell (``VmHWM`` of
``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``, minus the RSS at the start;
where the reset is refused, the rise of ``VmHWM`` itself, a lower bound); ``peak_gpu_mb`` is
``torch.cuda.max_memory_allocated`` on GPU. No tracemalloc (it misses native allocations and is slow).

Explanations: with ``--llm`` every AnomalyGPT cell (zero-, few- and full-shot) also answers "Is there any
anomaly?" for each test image and reports ``AnswerAccuracy`` and ``ExplanationGrounding``. The released
model needs three files for that: the LLM folder (Vicuna-7B v0), the PandaGPT delta
(``--pandagpt-checkpoint`` or ``$ANOMALIB_AGPT_PANDAGPT``) and the AnomalyGPT delta; a cell missing one
fails saying which. Per-model ``model_options`` in the YAML override any of them.

Multi-GPU and clusters: each cell runs on ``--devices`` Lightning devices (default 1). With ``--executor ray``
(:mod:`~anomalib_agpt.apps.leaderboard.ray_executor`, the ``cluster`` extra) the cells run in parallel as Ray
tasks, each reserving ``--cell-cpus`` CPUs and ``--cell-gpus`` GPUs, on a loopback-only Ray instance started
for the run or on the cluster of ``--ray-address``; the sequential path never imports Ray.
"""

from anomalib_agpt.apps.leaderboard.cells import batch_timer, make_datamodule, quiet, run_cell
from anomalib_agpt.apps.leaderboard.config import DEFAULT_MODELS, LeaderboardConfig, parse_args
from anomalib_agpt.apps.leaderboard.models import BuiltModel, build_model
from anomalib_agpt.apps.leaderboard.report import summarise, write_chart, write_markdown
from anomalib_agpt.apps.leaderboard.results import COLUMNS, METRICS, append_result, read_results
from anomalib_agpt.apps.leaderboard.run import main, run_leaderboard
from anomalib_agpt.apps.options import CHECKPOINT_ENV, IMAGEBIND_ENV, PANDAGPT_ENV

__all__ = [
    "CHECKPOINT_ENV",
    "COLUMNS",
    "DEFAULT_MODELS",
    "IMAGEBIND_ENV",
    "METRICS",
    "PANDAGPT_ENV",
    "BuiltModel",
    "LeaderboardConfig",
    "append_result",
    "batch_timer",
    "build_model",
    "main",
    "make_datamodule",
    "parse_args",
    "quiet",
    "read_results",
    "run_cell",
    "run_leaderboard",
    "summarise",
    "write_chart",
    "write_markdown",
]
