"""Which files a scan reads: ``.py`` files under the root, minus what is ignored.

Ignored, in this order:

* directories nobody keeps tasks in: hidden ones (``.git``, ``.venv``,
  ``.tox``, caches...), ``__pycache__``, ``node_modules``, ``site-packages``,
  ``build``, ``dist``, ``*.egg-info``, and any virtual environment (a folder
  holding ``pyvenv.cfg`` or ``conda-meta``);
* the patterns of ``.nuvomignore`` at the root and of the ``exclude`` option,
  with gitignore semantics (``build/``, ``*_test.py``, ``/scripts``,
  ``!keep.py``...);
* when ``include`` patterns are given, every file that matches none of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_EXCLUDED_DIRS", "IGNORE_FILE", "PathFilter", "Walk", "walk"]

IGNORE_FILE = ".nuvomignore"

#: Directory names never descended into (besides hidden directories and
#: virtual environments, recognised by their content).
DEFAULT_EXCLUDED_DIRS = frozenset(
    {"__pycache__", "node_modules", "site-packages", "dist-packages", "__pypackages__", "build", "dist"}
)
# A directory holding one of these is a virtual environment (venv, virtualenv, conda).
_ENV_MARKERS = ("pyvenv.cfg", "conda-meta")


class PathFilter:
    """Decides, by path relative to the root, what the walk skips."""

    def __init__(self, root: Path, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> None:
        self.root = root
        self.include = [p for p in include or () if p.strip()]
        self.exclude = [p for p in exclude or () if p.strip()]
        ignore_file = root / IGNORE_FILE
        self.ignore_lines: list[str] = []
        if ignore_file.is_file():
            self.ignore_lines = ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
        # Matching every path against a spec costs more than the rest of the
        # walk; with no patterns (the common case) no spec is built at all.
        self._exclude_spec = _spec([*self.ignore_lines, *self.exclude])
        self._include_spec = _spec(self.include)

    def skips_dir(self, rel: str) -> bool:
        return self._exclude_spec is not None and self._exclude_spec.match_file(rel + "/")

    def keeps_file(self, rel: str) -> bool:
        if self._exclude_spec is not None and self._exclude_spec.match_file(rel):
            return False
        return self._include_spec is None or self._include_spec.match_file(rel)


def _spec(lines: list[str]) -> Any:
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        return None
    import pathspec  # imported only when there are patterns: a worker never needs it

    return pathspec.GitIgnoreSpec.from_lines(lines)


@dataclass
class Walk:
    """The result of a walk: the files to scan and the directories visited
    (the dev watcher watches their time stamps for added or removed files).

    Every stat is taken before the entry is read, so that a change made while
    the scan runs shows as a time stamp newer than the one recorded."""

    #: ``(relative POSIX path, absolute path, stat result)``, sorted by path.
    files: list[tuple[str, str, os.stat_result]] = field(default_factory=list)
    #: ``(absolute path, (mtime_ns, size))`` of every folder listed.
    dirs: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    #: ``time.time_ns()`` when the walk began.
    started_ns: int = 0


def walk(root: Path, path_filter: PathFilter) -> Walk:
    """Every ``.py`` file under ``root`` that ``path_filter`` keeps. Symbolic
    links to files are followed, to directories not (no cycles)."""
    out = Walk(started_ns=time.time_ns())
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        path, rel = stack.pop()
        try:
            st = os.stat(path)
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue  # unreadable or vanished while walking: nothing to scan there
        if rel and any(entry.name in _ENV_MARKERS for entry in entries):
            continue
        out.dirs.append((path, (st.st_mtime_ns, st.st_size)))
        for entry in entries:
            name = entry.name
            child = f"{rel}/{name}" if rel else name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not _default_skip(name) and not path_filter.skips_dir(child):
                        stack.append((entry.path, child))
                elif name.endswith(".py") and entry.is_file() and path_filter.keeps_file(child):
                    out.files.append((child, entry.path, entry.stat()))
            except OSError:
                continue
    out.files.sort(key=lambda item: item[0])
    return out


def _default_skip(name: str) -> bool:
    return name[0] == "." or name in DEFAULT_EXCLUDED_DIRS or name.endswith(".egg-info")
