"""The product's own errors: a user's mistake it recognised, with a message that says what to change.

Commands print these as one ``error: <message>`` line (no traceback unless ``--verbose`` or
``ANOMALIB_AGPT_VERBOSE=1``); anything else is a bug and keeps its traceback. Each class also
derives from the built-in error it refines, so ``except ValueError`` keeps catching it.
"""

from __future__ import annotations

from collections.abc import Iterator


class AnomalyGPTError(Exception):
    """A mistake in the user's input (option, file, image, data); the message names it and what was expected."""


class OptionError(AnomalyGPTError, ValueError):
    """An option's value or a combination of options that cannot work."""


class OptionTypeError(AnomalyGPTError, TypeError):
    """An option of the wrong type."""


class MissingFileError(AnomalyGPTError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(AnomalyGPTError, FileExistsError):
    """An output folder holds files the product did not write and will not overwrite."""


class SetupError(AnomalyGPTError, RuntimeError):
    """An option this machine cannot serve (no CUDA, a missing optional package)."""


class CheckpointError(AnomalyGPTError, ValueError):
    """A weight file is unreadable, of the wrong kind, or does not match the model."""


class ImageReadError(AnomalyGPTError, ValueError):
    """An image file that cannot be decoded; the message names the file."""


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes/contexts, outermost first (each once)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def user_error(error: BaseException) -> AnomalyGPTError | None:
    """The product's own error inside ``error``'s chain (wrappers such as jsonargparse's included), if any."""
    return next((e for e in error_chain(error) if isinstance(e, AnomalyGPTError)), None)
