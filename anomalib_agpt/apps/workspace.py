"""Undo what a run refused for a user's mistake created in anomalib's results folder.

anomalib's Engine creates ``<root>/<model>/<dataset>/<category>/v<N>`` and points ``latest`` at it
when a run starts, so a run that fails on the user's input would leave an empty version behind and
``.../latest/weights/lightning/model.ckpt`` would stop existing. The guard records the folder's
versions and links before the run and puts them back when the run fails with one of the product's
user errors. Anything else (an interrupted or crashed run) is left as it is, and a version that holds
a checkpoint is never removed: what a run saved is the user's.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from anomalib_agpt.errors import find_user_error

VERSION = re.compile(r"v\d+")
LATEST = "latest"


@dataclass
class WorkspaceState:
    """Version folders, ``latest`` link targets and folders under a results root at one moment."""

    versions: set[Path] = field(default_factory=set)
    links: dict[Path, str] = field(default_factory=dict)
    folders: set[Path] = field(default_factory=set)

    @classmethod
    def read(cls, root: Path) -> WorkspaceState:
        """Walk ``root``'s folders without descending into versions (their contents are the runs' own)."""
        state = cls()
        if not root.is_dir():
            return state
        for current, folders, _ in os.walk(root):
            here = Path(current)
            state.folders.add(here)
            if (here / LATEST).is_symlink():
                state.links[here / LATEST] = os.readlink(here / LATEST)
            for name in list(folders):
                if VERSION.fullmatch(name):
                    state.versions.add(here / name)
                    folders.remove(name)
                elif name == LATEST:
                    folders.remove(name)
        return state


def restore(root: Path, before: WorkspaceState) -> list[Path]:
    """Remove the versions and folders made since ``before``, put the ``latest`` links back; the removed paths.

    A new version that holds a checkpoint stays, and so does every link to it.
    """
    after = WorkspaceState.read(root)
    kept = {version for version in after.versions - before.versions if any(version.rglob("*.ckpt"))}
    removed = sorted(after.versions - before.versions - kept)
    for version in removed:
        shutil.rmtree(version, ignore_errors=True)
    for link in set(after.links) | set(before.links):
        if before.links.get(link) == after.links.get(link) or link.parent / after.links.get(link, "") in kept:
            continue
        link.unlink(missing_ok=True)
        if link in before.links:
            link.symlink_to(before.links[link])
    new_folders = sorted(after.folders - before.folders, key=lambda path: len(path.parts), reverse=True)
    for folder in new_folders:  # deepest first, and only when the failed run left them empty
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            removed.append(folder)
    return removed


@contextmanager
def restored_on_failure(root: Path) -> Iterator[None]:
    """Run the block; if it fails on a user's mistake, leave ``root`` as it was before (see :func:`restore`)."""
    before = WorkspaceState.read(root)
    try:
        yield
    except Exception as error:
        if find_user_error(error) is not None:
            restore(root, before)
        raise
