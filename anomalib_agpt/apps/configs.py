"""The config files shipped inside the package: found by name for ``--config``, listed and copied by ``configs``.

A pip user has no repository checkout, so ``--config mvtec_few_shot`` (or ``leaderboard/mvtec``)
resolves to the packaged file when no such file exists where the user is; an existing path always
wins. ``anomalib-agpt configs`` lists them; ``anomalib-agpt configs NAME [DEST]`` copies one out to edit.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from anomalib_agpt.errors import MissingFileError, OptionError, OutputExistsError

PACKAGED = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FLAGS = ("--config", "-c")


def packaged_configs() -> dict[str, Path]:
    """``{name: path}`` of every shipped config, named by its path under the folder without ``.yaml``."""
    return {path.relative_to(PACKAGED).with_suffix("").as_posix(): path for path in sorted(PACKAGED.rglob("*.yaml"))}


def _config_key(name: str) -> str:
    """A config name as :func:`packaged_configs` keys it (``configs/paper/x.yaml`` -> ``paper/x``)."""
    return Path(name).as_posix().removesuffix(".yaml").removeprefix("configs/")


def packaged_config(name: str) -> Path:
    """The shipped config ``name`` (``mvtec_few_shot``, ``configs/mvtec_few_shot.yaml``, ``leaderboard/mvtec``)."""
    configs = packaged_configs()
    found = configs.get(_config_key(name))
    if found is None:
        msg = f"config '{name}': no such file, and no packaged config of that name ({', '.join(configs)})."
        raise MissingFileError(msg)
    return found


def resolve_config_flags(args: Sequence[str]) -> list[str]:
    """``args`` with each ``--config VALUE`` that names no existing file but a packaged config replaced by its path."""
    resolved = list(args)
    for index, arg in enumerate(resolved):
        flag, _, inline = arg.partition("=")
        if flag not in CONFIG_FLAGS:
            continue
        position = index if inline else index + 1
        if position >= len(resolved):
            continue
        value = inline or resolved[position]
        if Path(value).expanduser().exists() or value.lstrip().startswith(("{", "[")):
            continue
        found = packaged_configs().get(_config_key(value))
        if found is not None:
            resolved[position] = f"{flag}={found}" if inline else str(found)
    return resolved


def main(argv: Sequence[str]) -> int:
    """``configs``: list the shipped configs; ``configs NAME [DEST]``: copy one (default: ``./<file name>``)."""
    args = list(argv)
    if args and args[0] in {"-h", "--help"}:
        sys.stdout.write(
            "usage: anomalib-agpt configs [NAME [DEST]]\n\n"
            "Without NAME: list the configs shipped with the package. With NAME: copy it to DEST\n"
            "(default: the current folder) to edit. Any command's --config also takes a NAME directly.\n"
        )
        return 0
    if not args:
        for name, path in packaged_configs().items():
            sys.stdout.write(f"{name:28s} {path}\n")
        return 0
    if len(args) > 2:
        msg = f"configs takes NAME and an optional DEST, got {len(args)} arguments: {' '.join(args)}"
        raise OptionError(msg)
    source = packaged_config(args[0])
    target = Path(args[1]) if len(args) == 2 else Path.cwd() / source.name
    if target.is_dir():
        target = target / source.name
    if target.exists():
        msg = f"configs: '{target}' exists; pass another DEST or remove it first."
        raise OutputExistsError(msg)
    shutil.copyfile(source, target)
    sys.stdout.write(f"copied {source.name} to {target}\n")
    return 0
