"""The product's own errors: a user's mistake it recognised, with a message that says what to change.

``anomalib-agpt`` prints these as one ``error: <message>`` line (no traceback unless ``--verbose`` or
``ANOMALIB_AGPT_VERBOSE=1``); anything else is a bug and keeps its traceback. Each class also
derives from the built-in error it refines, so ``except ValueError`` keeps catching it.

Wrappers may lose the error object: jsonargparse turns a constructor's exception into the text of
its "Does not validate against any of the Union subtypes" error. So the last error raised is
remembered, and when a process is about to die of an exception whose text carries that message (the
stock ``anomalib`` CLI), the message is printed once more after the traceback, as the last line.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator
from types import TracebackType

_last: tuple[type[AnomalyGPTError], tuple[object, ...]] | None = None
"""Class and arguments of the last product error created: not the error itself, whose traceback would keep
its frames' locals (tensors, mapped weights) alive."""
_hook_installed = False


class AnomalyGPTError(Exception):
    """A mistake in the user's input (option, file, image, data); the message names it and what was expected."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        _remember(self)


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


def check_choice(option: str, value: object, allowed: Collection[object]) -> None:
    """Refuse a value outside ``allowed`` with a message naming the option and every allowed value."""
    if value not in allowed:
        msg = f"{option}={value!r}: expected one of {', '.join(repr(a) for a in allowed)}."
        raise OptionError(msg)


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


def last_raised_in(error: BaseException) -> AnomalyGPTError | None:
    """A copy of the last product error created, if ``error``'s chain carries its message (it was wrapped as text)."""
    if _last is None:
        return None
    kind, args = _last
    last = kind.__new__(kind, *args)  # not __init__: a copy is not a new error to remember
    last.args = args
    message = str(last)
    return last if any(message in str(e) for e in error_chain(error)) else None


def find_user_error(error: BaseException) -> AnomalyGPTError | None:
    """The product's error behind ``error``: in its chain, or wrapped into its text."""
    return user_error(error) or last_raised_in(error)


def _remember(error: AnomalyGPTError) -> None:
    global _last, _hook_installed  # one record per process, as sys.excepthook itself
    _last = (type(error), error.args)
    if not _hook_installed:
        _hook_installed = True
        previous = sys.excepthook

        def hook(kind: type[BaseException], value: BaseException, trace: TracebackType | None) -> None:
            previous(kind, value, trace)
            found = find_user_error(value)
            if found is not None:
                sys.stderr.write(f"error: {found}\n")

        sys.excepthook = hook
