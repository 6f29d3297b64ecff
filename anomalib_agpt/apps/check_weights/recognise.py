"""One path: find it, tell a folder from a file and a file's format, and hand it to the reader of its kind.

:func:`describe` never raises for a path: a missing or unreadable one becomes the report's ``error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from anomalib_agpt.apps.check_weights.lightning_checkpoints import _describe_lightning
from anomalib_agpt.apps.check_weights.llm_weights import _describe_gguf, _describe_llm_folder
from anomalib_agpt.apps.check_weights.reading import _safetensors_header, _torch_load, _unreadable
from anomalib_agpt.apps.check_weights.released_files import _describe_state_dict
from anomalib_agpt.apps.check_weights.report import WeightReport
from anomalib_agpt.errors import AnomalyGPTError, MissingFileError
from anomalib_agpt.weights import checkpoints as ckpt
from anomalib_agpt.weights.checkpoints import first_line


def _describe_file(path: Path, report: WeightReport) -> None:
    if path.suffix == ".gguf":
        _describe_gguf(path, report)
        return
    if path.suffix == ".safetensors":
        found = ckpt.identify(dict.fromkeys(_safetensors_header(path)))  # type: ignore[arg-type]
        if (path.parent / "config.json").is_file():
            raise _unreadable(f"one weight file of the LLM folder '{path.parent}'; pass the folder")
        looks = f"; it looks like {found}, which the model reads as a .pt/.pth PyTorch file" if found else ""
        raise _unreadable(f"a safetensors file outside an LLM folder{looks}")
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        _describe_state_dict(obj, path, report)
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        _describe_lightning(obj, report)
    else:
        if isinstance(obj, Mapping):
            kinds = sorted({type(v).__name__ for v in obj.values()})
            what = f"a dict of {', '.join(kinds)}" if obj else "an empty dict"
        else:
            what = f"a {type(obj).__name__}"
        raise _unreadable(f"a PyTorch file holding {what}, not a dict of tensors nor a Lightning checkpoint")


def describe(given: str | Path) -> WeightReport:
    """Say what one path is (kind and sizes), or why it is missing or not a file this product reads."""
    report = WeightReport(str(given))
    try:
        path = ckpt.resolve_weight_path(given, "check-weights")
        report.path = path
        if path != Path(given).expanduser():
            report.details.append(f"found at {path}")
        if path.is_dir():
            if (path / "config.json").is_file():
                _describe_llm_folder(path, report)
                return report
            inner = path / "pytorch_model.pt"
            if not inner.is_file():
                raise _unreadable("a folder without config.json (not an LLM folder) and without pytorch_model.pt")
            report.path = path = inner
            report.details.append(f"reading {inner.name} in the folder")
        _describe_file(path, report)
    except MissingFileError as error:
        report.kind, report.error = None, str(error)
    except AnomalyGPTError as error:
        report.kind, report.error = None, f"{given}: {error}"
    except OSError as error:
        report.kind, report.error = None, f"{given}: cannot be read ({first_line(error)})"
    except (
        AttributeError,
        KeyError,
        IndexError,
        TypeError,
        ValueError,
    ) as error:  # a known key with an unexpected layout
        report.kind, report.error = None, f"{given}: {_unreadable(f'unexpected contents ({first_line(error)})')}"
    return report
