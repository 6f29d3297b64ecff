"""What a leaderboard run depends on: models, data, seeds, weights; from flags, a YAML file and the environment.

The options are parsed the way anomalib's own CLI parses them (jsonargparse): ``--config FILE`` reads a
YAML file of the same option names, ``--print_config`` prints the effective options as YAML and exits,
and every option has its underscore spelling (``--imagebind_checkpoint``, the YAML key) next to the
dashed one (``--imagebind-checkpoint``). Flags win over the config file wherever they stand on the
line, the file wins over the environment variables, and those over the defaults. ``anomalib-agpt
demo`` builds its parser from the same pieces (:class:`CommandParser`).
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

from anomalib_agpt.errors import AnomalyGPTError, MissingFileError, OptionError

IMAGEBIND_ENV = "ANOMALIB_AGPT_IMAGEBIND"


CHECKPOINT_ENV = "ANOMALIB_AGPT_CHECKPOINT"


PANDAGPT_ENV = "ANOMALIB_AGPT_PANDAGPT"


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


PRINT_CONFIG_HELP = (
    "print the options this run would use, as YAML that --config reads back, and exit "
    "(=skip_default leaves out the defaults, =skip_null the empty ones)"
)


PRINT_CONFIG_FLAGS = {"skip_default": "skip_default", "skip_null": "skip_none"}
"""``--print_config=FLAG[,FLAG]``: jsonargparse's flags and the ``dump`` argument each sets."""


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
    def random_anomalygpt(self) -> bool:
        """No AnomalyGPT weights configured: the ``random-small`` preset stands in."""
        return not (self.imagebind_checkpoint and self.anomalygpt_checkpoint)


class HelpFormatter(DefaultHelpFormatter):
    """Help as written: no appended type names; each option's spellings share one metavar; paragraphs kept."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help or ""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith(("examples:", "  ")):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                flat = " ".join(paragraph.split())
                paragraphs.append(textwrap.fill(flat, width, initial_indent=indent, break_on_hyphens=False))
        return "\n\n".join(paragraphs)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class ConfigFile(ActionConfigFile):
    """``--config FILE``: YAML of options under their own names (``-`` or ``_``); unknown names are an error."""

    def __call__(
        self,
        parser: ArgumentParser,
        cfg: Namespace,
        values: Any,  # noqa: ANN401
        option_string: str | None = None,
    ) -> None:
        """Read the file, check its keys and merge it into the options parsed so far."""
        import yaml

        typed = option_string or "--config"
        path = Path(str(values))
        if not path.is_file():
            fail(parser, MissingFileError(f"{typed} {values}: no such file (expected a YAML file of options)"))
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            detail = " ".join(str(error).split())[:200]
            fail(parser, OptionError(f"{typed} {values}: not a readable YAML file ({detail})"))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            fail(
                parser, OptionError(f"{typed} {values}: expected YAML of `option: value` lines, got a {_kind(loaded)}")
            )
        known = option_names(parser)
        unknown = [str(key) for key in loaded if str(key).replace("-", "_") not in known]
        if unknown:
            fail(
                parser,
                OptionError(
                    f"{typed} {values}: unknown option(s) {', '.join(unknown)}; "
                    f"expected any of: {', '.join(sorted(known))}",
                ),
            )
        options = {str(key).replace("-", "_"): value for key, value in loaded.items()}
        self.apply_config(parser, cfg, self.dest, yaml.safe_dump(options, sort_keys=False))


def _kind(value: object) -> str:
    return {list: "list", str: "single value", int: "number", float: "number"}.get(type(value), type(value).__name__)


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    """The names a config file may use (each option's underscore spelling)."""
    skipped = {"help", "config", "print_config", argparse.SUPPRESS}
    return {action.dest for action in parser._actions if action.dest not in skipped}


def fail(parser: ArgumentParser, error: AnomalyGPTError) -> NoReturn:
    """Stop parsing with the user's mistake: usage, ``error: <message>`` and exit status 2."""
    parser.error(str(error), error)
    raise error  # not reached: error() exits (or raises, with exit_on_error=False)


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
    "imagebind_checkpoint": f"ImageBind-Huge weights, imagebind_huge.pth (default: ${IMAGEBIND_ENV})",
    "anomalygpt_checkpoint": f"AnomalyGPT delta, e.g. train_visa/pytorch_model.pt (default: ${CHECKPOINT_ENV})",
    "vision_heads": "attention heads of the ImageBind vision tower (default: 16, ImageBind-Huge)",
    "text_heads": "attention heads of the ImageBind text tower (default: 16, ImageBind-Huge)",
    "llm": (
        "LLM folder (Vicuna-7B v0): every AnomalyGPT cell also answers 'Is there any anomaly?' and the table "
        "gets answer accuracy and grounding; needs --pandagpt-checkpoint"
    ),
    "pandagpt_checkpoint": f"PandaGPT delta the LLM answers with (default: ${PANDAGPT_ENV})",
    "epochs": "training epochs of the models that train (default: 2)",
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
"""Each option's help (``anomalib-agpt demo`` shares those of the weights)."""


def add_option(
    container: Any,  # noqa: ANN401  (a parser or an argument group)
    name: str,
    kind: Any,  # noqa: ANN401  (a type hint)
    default: Any,  # noqa: ANN401
    metavar: str | None = None,
    help_text: str | None = None,
    **extra: Any,  # noqa: ANN401
) -> argparse.Action:
    """``--name`` with its underscore spelling first, then the dashed one (``--k_shot, --k-shot``).

    ``kind`` ``bool`` makes a switch (``--visualize``; ``visualize: true`` in YAML); the help defaults to
    :data:`OPTION_HELP`'s.
    """
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    options = {"default": default, "help": help_text or OPTION_HELP[name], **extra}
    if kind is bool:
        return container.add_argument(*spellings, action="store_true", **options)
    return container.add_argument(*spellings, type=kind, metavar=metavar, **options)


PARSER_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)"(?P<element> element \d+)?:\s*(?P<rest>.*)$', re.DOTALL)
CLASS_NAME = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
EXPECTED = re.compile(r"Expected a (\w+)|Not of type (\w+)")
GIVEN = re.compile(r"(?:Got|Given) value: (.*)")
TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "Path": "a path",
    "dict": "a mapping such as {key: value}",
    "bool": "true or false",
    "list": "a list",
}


class CommandParser(ArgumentParser):
    """A jsonargparse parser with ``--config`` (see :class:`ConfigFile`), ``--print_config`` and short errors."""

    def __init__(self, prog: str, description: str, epilog: str | None = None) -> None:
        super().__init__(
            prog=prog,
            description=description,
            epilog=epilog,
            usage=f"{prog} [--config FILE] [--print_config] [options]",
            formatter_class=HelpFormatter,
        )
        self.typed: list[str] = []
        self.add_argument(
            "-c",
            "--config",
            action=ConfigFile,
            metavar="FILE",
            help="YAML file of options under the names below (underscore spelling; dashes accepted)",
        )
        for action in self._actions:
            if "--print_config" in action.option_strings:
                action.help = PRINT_CONFIG_HELP

    def parse(self, argv: Sequence[str]) -> tuple[Namespace, dict[str, bool] | None]:
        """The parsed options (config files first, so flags win) and the ``--print_config`` request, if any."""
        args, print_config = self._take_print_config(_config_first(list(argv)))
        self.typed = args
        return self.parse_args(args), print_config

    def print_options(self, cfg: Namespace, flags: dict[str, bool]) -> NoReturn:
        """Print ``cfg`` as the YAML ``--config`` reads back, and exit 0."""
        print(self.dump(cfg, **flags), end="", flush=True)
        raise SystemExit(0)

    def _take_print_config(self, args: list[str]) -> tuple[list[str], dict[str, bool] | None]:
        rest = [arg for arg in args if arg != "--print_config" and not arg.startswith("--print_config=")]
        if len(rest) == len(args):
            return args, None
        flags = {"skip_none": False}  # jsonargparse's --print_config shows the empty options too
        for arg in args:
            if arg.startswith("--print_config="):
                for flag in filter(None, arg.partition("=")[2].split(",")):
                    if flag not in PRINT_CONFIG_FLAGS:
                        fail(self, OptionError(f"{arg}: expected skip_default and/or skip_null, comma separated"))
                    flags[PRINT_CONFIG_FLAGS[flag]] = True
        return rest, flags

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Usage, ``error: <message>`` (one line, naming the option) and exit status 2, as jsonargparse does."""
        super().error(self.short_message(message), ex)

    def short_message(self, message: str) -> str:
        """A multi-line jsonargparse type error as ``--option: expected an integer, got x``."""
        text = CLASS_NAME.sub(r"\1", message.strip())
        match = PARSER_KEY.match(text)
        if match is None:
            return " ".join(text.split())
        option = self.spelled(match["key"])
        expected = [name for pair in EXPECTED.findall(match["rest"]) for name in pair if name and name != "NoneType"]
        given = GIVEN.search(match["rest"])
        if expected and given:
            wanted = " or ".join(TYPE_WORDS.get(name, name) for name in dict.fromkeys(expected))
            each = " for each value" if match["element"] else ""
            return f"{option}: expected {wanted}{each}, got {given[1].strip()}"
        return f"{option}: {' '.join(match['rest'].split())}"

    def spelled(self, key: str) -> str:
        """The option ``key`` as the user typed it on the line, or as the config file's key."""
        for action in self._actions:
            if action.dest == key:
                for spelling in action.option_strings:
                    if any(arg == spelling or arg.startswith(spelling + "=") for arg in self.typed):
                        return spelling
        return f"{key} (config file)"


def _config_first(args: list[str]) -> list[str]:
    """``args`` with every ``--config FILE`` (or ``-c FILE``) moved to the front, in order: flags override files."""
    configs: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in {"-c", "--config"} and index + 1 < len(args):
            configs += args[index : index + 2]
            index += 2
            continue
        (configs if arg.startswith("--config=") else rest).append(arg)
        index += 1
    return configs + rest


def build_parser() -> CommandParser:
    """The options of ``anomalib-agpt leaderboard`` (environment defaults read now)."""
    parser = CommandParser("anomalib-agpt leaderboard", DESCRIPTION, EPILOG)
    run = parser.add_argument_group("what to run")
    add_option(run, "output", Path, Path("leaderboard_output"), "DIR")
    add_option(run, "models", str, list(DEFAULT_MODELS), "NAME", nargs="+")
    add_option(run, "dataset", str, "synthetic", choices=DATASETS)
    add_option(run, "root", Path | None, None, "DIR")
    add_option(run, "categories", str, [], "NAME", nargs="+")
    add_option(run, "seeds", int, [0], "N", nargs="+")
    add_option(run, "protocol", str, "anomalib", choices=("anomalib", "paper"))
    weights = parser.add_argument_group("AnomalyGPT weights and explanations (none given: a small random AnomalyGPT)")
    add_weight_options(weights)
    add_option(weights, "llm", str | None, None, "DIR")
    add_option(weights, "pandagpt_checkpoint", str | None, os.environ.get(PANDAGPT_ENV) or None, "FILE")
    training = parser.add_argument_group("training and testing")
    for name, default in (("epochs", 2), ("devices", 1), ("train_batch_size", 4), ("eval_batch_size", 8)):
        add_option(training, name, int, default, "N")
    add_option(training, "num_workers", int, 0, "N")
    add_option(training, "visualize", bool, False)
    advanced = parser.add_argument_group("more options (usually in the config file)")
    add_option(advanced, "synthetic", dict[str, Any], {}, "{KEY: VALUE}")
    add_option(advanced, "folder", dict[str, Any], {}, "{KEY: VALUE}")
    add_option(advanced, "model_options", dict[str, dict[str, Any]], {}, "{MODEL: {KEY: VALUE}}")
    cluster = parser.add_argument_group("where the cells run")
    add_option(cluster, "executor", str, "local", choices=EXECUTORS)
    add_option(cluster, "ray_address", str | None, None, "ADDRESS")
    add_option(cluster, "cell_cpus", int, 1, "N")
    add_option(cluster, "cell_gpus", float | None, None, "G")
    return parser


def add_weight_options(container: Any) -> None:  # noqa: ANN401
    """The AnomalyGPT weight files (defaults from the environment) and ImageBind's head counts."""
    add_option(container, "imagebind_checkpoint", str | None, os.environ.get(IMAGEBIND_ENV) or None, "FILE")
    add_option(container, "anomalygpt_checkpoint", str | None, os.environ.get(CHECKPOINT_ENV) or None, "FILE")
    add_option(container, "vision_heads", int, 16, "N")
    add_option(container, "text_heads", int, 16, "N")


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
