"""The commands' one option parser: ``serve``, ``leaderboard`` and ``demo`` parse their flags through it.

The options are parsed the way anomalib's own CLI parses them (jsonargparse): ``--config FILE`` reads a
YAML file of the same option names, ``--print_config`` prints the effective options as YAML and exits,
and every option has its underscore spelling (``--imagebind_checkpoint``, the YAML key) next to the
dashed one (``--imagebind-checkpoint``). Flags win over the config file wherever they stand on the
line, the file wins over the environment variables, and those over the defaults. A mistake is one
``error: ...`` line naming the option as typed and what it expects (after the usage line), exit status 2.
One place for all this, so every command spells, reads and reports its options the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace

from anomalib_agpt.errors import AnomalyGPTError, MissingFileError, OptionError

IMAGEBIND_ENV = "ANOMALIB_AGPT_IMAGEBIND"
CHECKPOINT_ENV = "ANOMALIB_AGPT_CHECKPOINT"
PANDAGPT_ENV = "ANOMALIB_AGPT_PANDAGPT"
"""Environment variables that give the weight files' defaults to every command."""

WEIGHT_HELP = {
    "imagebind_checkpoint": f"ImageBind-Huge weights, imagebind_huge.pth (default: ${IMAGEBIND_ENV})",
    "anomalygpt_checkpoint": f"AnomalyGPT delta, e.g. train_visa/pytorch_model.pt (default: ${CHECKPOINT_ENV})",
    "pandagpt_checkpoint": f"PandaGPT delta (llama_proj and LoRA) the LLM answers with (default: ${PANDAGPT_ENV})",
}
"""The help of the weight options every command shares (the head counts' help says their default)."""


PRINT_CONFIG_HELP = (
    "print the options this run would use, as YAML that --config reads back, and exit "
    "(=skip_default leaves out the defaults, =skip_null the empty ones)"
)


PRINT_CONFIG_FLAGS = {"skip_default": "skip_default", "skip_null": "skip_none"}
"""``--print_config=FLAG[,FLAG]``: jsonargparse's flags and the ``dump`` argument each sets."""


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


def add_option(
    container: Any,  # noqa: ANN401  (a parser or an argument group)
    name: str,
    kind: Any,  # noqa: ANN401  (a type hint)
    default: Any,  # noqa: ANN401
    metavar: str | None = None,
    help_text: str | None = None,
    *,
    helps: Mapping[str, str] = WEIGHT_HELP,
    **extra: Any,  # noqa: ANN401
) -> argparse.Action:
    """``--name`` with its underscore spelling first, then the dashed one (``--k_shot, --k-shot``).

    ``kind`` ``bool`` makes a switch (``--visualize``; ``visualize: true`` in YAML). Without ``help_text``
    the help is ``helps[name]``: a command passes its own table, so this module knows no command's options.
    """
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    options = {"default": default, "help": help_text or helps[name], **extra}
    if kind is bool:
        return container.add_argument(*spellings, action="store_true", **options)
    return container.add_argument(*spellings, type=kind, metavar=metavar, **options)


def add_weight_options(container: Any, heads_default: int | None = 16) -> None:  # noqa: ANN401
    """The AnomalyGPT weight files (defaults from the environment) and ImageBind's head counts.

    ``heads_default`` ``None`` (``serve``) leaves the head counts to the checkpoint or the model's default.
    """
    add_option(container, "imagebind_checkpoint", str | None, os.environ.get(IMAGEBIND_ENV) or None, "FILE")
    add_option(container, "anomalygpt_checkpoint", str | None, os.environ.get(CHECKPOINT_ENV) or None, "FILE")
    said, kind = f"{heads_default}, ImageBind-Huge", int
    if heads_default is None:
        said, kind = "the checkpoint's, else 16 for ImageBind-Huge", int | None
    for tower in ("vision", "text"):
        help_text = f"attention heads of the ImageBind {tower} tower (default: {said})"
        add_option(container, f"{tower}_heads", kind, heads_default, "N", help_text)


def add_llm_options(container: Any, llm_help: str) -> None:  # noqa: ANN401
    """``--llm DIR`` (its help, ``llm_help``, says what the command does with it) and the PandaGPT delta."""
    add_option(container, "llm", str | None, None, "DIR", llm_help)
    add_option(container, "pandagpt_checkpoint", str | None, os.environ.get(PANDAGPT_ENV) or None, "FILE")


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
