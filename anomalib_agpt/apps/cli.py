"""``anomalib-agpt``: anomalib's CLI with the plugin imported (so ``--model AnomalyGPT`` works), plus its own commands.

anomalib finds models by walking the imported subclasses of ``AnomalibModule``; nothing imports a
plugin before parsing, so the stock ``anomalib`` command only knows ``anomalib_agpt.AnomalyGPT``.
Every command here prints a mistake the product recognised as one ``error: ...`` line and exits
with status 2 (the traceback with ``--verbose`` or ``ANOMALIB_AGPT_VERBOSE=1``), and a failed
anomalib run leaves the results folder as it found it.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anomalib_agpt.apps.configs import resolve_config_flags
from anomalib_agpt.errors import find_user_error

VERBOSE_ENV = "ANOMALIB_AGPT_VERBOSE"
USAGE = f"""usage: anomalib-agpt demo [--help]            run the offline demo (AnomalyGPT vs Patchcore)
       anomalib-agpt leaderboard [--help]     rank models on the same data/categories/seeds
       anomalib-agpt serve [--help]           web demo: heatmap, mask, score and a chat (needs [serve])
       anomalib-agpt check-weights PATH...    say what weight files are and what is missing
       anomalib-agpt configs [NAME [DEST]]    list the packaged configs, or copy one (--config NAME also works)
       anomalib-agpt {{fit,validate,test,train,predict,export}} ...   anomalib's CLI, --model AnomalyGPT
                                              (list the model's options: fit --model.help AnomalyGPT)

Mistakes in options, weights or images print one 'error: ...' line and exit with status 2;
add --verbose (or set {VERBOSE_ENV}=1) for the traceback.
"""
ENGINE_COMMANDS = ("fit", "validate", "test", "train", "predict", "export")
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "lightning.pytorch.utilities.rank_zero")
UPSTREAM_WARNINGS = (
    (FutureWarning, ""),
    (DeprecationWarning, ""),
    (UserWarning, r"The dirpath has changed"),  # Lightning, when predict reuses a fit's checkpoint callback
    (UserWarning, r".*does not have many workers"),
)


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; a recognised mistake ends as ``error: <message>`` and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    args = [arg for arg in args if arg != "--verbose"]
    quiet_upstream_output()
    try:
        status = dispatch(args)
    except KeyboardInterrupt:
        if verbose:
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(130)  # the shell's status for Ctrl-C
    except Exception as error:
        found = find_user_error(error)
        if found is None or verbose:
            raise
        sys.stderr.write(f"error: {found}\n(--verbose or {VERBOSE_ENV}=1 shows the traceback)\n")
        sys.exit(2)
    if status:
        sys.exit(status)


def dispatch(args: list[str]) -> int:
    """The product's own commands by name, anything else to anomalib's CLI; the exit status."""
    commands: dict[str, Callable[[list[str]], Any]] = {
        "demo": _lazy("anomalib_agpt.apps.demo"),
        "leaderboard": _lazy("anomalib_agpt.apps.leaderboard"),
        "serve": _lazy("anomalib_agpt.apps.serve.app"),
        "check-weights": _lazy("anomalib_agpt.apps.check_weights"),
        "configs": _lazy("anomalib_agpt.apps.configs"),
    }
    args = resolve_config_flags(args)
    if args and args[0] in commands:
        return int(commands[args[0]](args[1:]) or 0)
    if args and args[0] in {"-h", "--help"} and len(args) == 1:
        sys.stdout.write(USAGE + "\n")
    run_anomalib(args)
    return 0


def _lazy(module: str) -> Callable[[list[str]], Any]:
    """A command's ``main``, imported when the command runs (serve needs Gradio, the others do not)."""

    def run(args: list[str]) -> Any:  # noqa: ANN401 - the command's exit status or None
        import importlib

        return importlib.import_module(module).main(args)

    return run


def quiet_upstream_output() -> None:
    """No FutureWarnings from timm/anomalib imports, no Lightning/ONNX INFO floods; the product's lines stay."""
    for category, message in UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", category=category, message=message)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")  # worker processes
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_anomalib(args: list[str]) -> None:
    """Anomalib's CLI with this package imported; a run refused for a user's mistake leaves no new version."""
    from anomalib.cli.cli import configure_logger

    import anomalib_agpt  # noqa: F401  (registers AnomalyGPT for short names)
    from anomalib_agpt.apps.workspace import restored_on_failure

    root_logger = logging.getLogger()
    if not any(type(handler).__name__ == "RichHandler" for handler in root_logger.handlers):
        configure_logger()
    for handler in list(root_logger.handlers):  # configure_logger adds a rich handler beside basicConfig's: one copy
        if type(handler) is logging.StreamHandler:
            root_logger.removeHandler(handler)
    reject_flat_model_options(args)
    cli = _cli_class()(args=args, run=False)
    if cli.subcommand not in ENGINE_COMMANDS:
        cli._run_subcommand()
        return
    root = Path(cli.config[cli.subcommand].get("default_root_dir") or "results")
    with restored_on_failure(root):
        cli._run_subcommand()
    report_outputs(cli)


def reject_flat_model_options(args: Sequence[str]) -> None:
    """Refuse AnomalyGPT's flat options (before 0.3) on the command line or in a ``--config`` file, naming their place.

    jsonargparse would reject them too, in a page of text that never says where they went.
    """
    import yaml

    from anomalib_agpt.errors import OptionError
    from anomalib_agpt.module.legacy_options import flat_options_in_args, flat_options_in_config, moved_message

    flat = flat_options_in_args(args)
    if flat:
        raise OptionError(moved_message(flat, "--model."))
    configs = [value for flag, value in itertools.pairwise(args) if flag in {"--config", "-c"}]
    configs += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for config in configs:
        path = Path(config)
        if not path.is_file():
            continue  # jsonargparse says so
        try:
            parsed = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # jsonargparse says what is wrong with it
        flat = flat_options_in_config(parsed) if isinstance(parsed, dict) else []
        if flat:
            msg = f"{path}: " + moved_message(flat, "model.init_args.")
            raise OptionError(msg)


def _cli_class() -> type:
    """AnomalibCLI that reads ``predict`` folders with the product's image reader and keeps export's result."""
    from anomalib.cli import AnomalibCLI
    from torch.utils.data import DataLoader

    class AnomalyGPTCLI(AnomalibCLI):
        """anomalib's CLI; ``predict --data FOLDER`` skips unreadable images and reads every image mode."""

        result: Any = None
        skipped: list[tuple[Path, str]]

        def instantiate_classes(self) -> None:
            super().instantiate_classes()
            self.skipped = []
            if self.subcommand == "predict" and isinstance(self.datamodule, str | Path):
                from anomalib_agpt.data import PredictImages

                resize_mode = getattr(self.model, "resize_mode", "crop")
                dataset = PredictImages(self.datamodule, resize_mode=resize_mode)
                self.skipped = dataset.skipped
                self.datamodule = DataLoader(dataset, collate_fn=dataset.collate_fn)

        def _run_subcommand(self) -> None:
            if self.subcommand not in ENGINE_COMMANDS:  # install, the pipelines (benchmark): anomalib's own
                super()._run_subcommand()
                return
            fn = getattr(self.engine, self.subcommand)
            self.result = fn(**self._prepare_subcommand_kwargs(self.subcommand))

    return AnomalyGPTCLI


def report_outputs(cli: Any) -> None:  # noqa: ANN401 - an AnomalyGPTCLI
    """Say where the run's outputs went: its version folder, checkpoint, export, JSON Lines, result images."""
    lines: list[str] = []
    trainer = getattr(cli.engine, "_trainer", None)
    if cli.subcommand == "export" and cli.result is not None:
        lines.append(f"exported model: {cli.result}")
    elif trainer is not None:
        lines.append(f"run folder: {trainer.default_root_dir}")
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if cli.subcommand in {"fit", "train"} and checkpoint:
            lines.append(f"checkpoint: {checkpoint}")
        for callback in trainer.callbacks:
            output = getattr(callback, "output_dir", None)
            if output is not None and cli.subcommand in {"test", "train", "predict"}:
                lines.append(f"{type(callback).__name__}: {output}")
    if getattr(cli, "skipped", None):
        lines.append(f"skipped {len(cli.skipped)} unreadable image(s): {', '.join(str(p) for p, _ in cli.skipped)}")
    for line in lines:
        sys.stdout.write(line + "\n")


if __name__ == "__main__":
    main()
