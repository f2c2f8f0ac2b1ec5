"""Reading and writing ``manifest.json``.

The file is JSON with one task, error or file per line, so that it diffs well
and stays fast to load for large projects. It is replaced atomically (written
to a temporary file beside it, then renamed), so a worker reading it while
``nuvom discover tasks`` runs sees the old or the new manifest, never half.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from pathlib import Path

from nuvom.discovery._models import MANIFEST_VERSION, Manifest
from nuvom.errors import NuvomError
from pydantic import ValidationError

__all__ = ["DiscoveryError", "ManifestError", "load_manifest", "manifest_path_for", "write_manifest"]


class DiscoveryError(NuvomError):
    """Discovery cannot run: the root is not a folder, the manifest cannot be written."""


class ManifestError(DiscoveryError):
    """The manifest exists but cannot be used (unreadable, not JSON, another version)."""


def manifest_path_for(root: Path, manifest_path: Path | str | None = None) -> Path:
    """Where the manifest of the project at ``root`` lives: ``manifest_path``,
    else ``NUVOM_MANIFEST_PATH`` (default ``.nuvom/manifest.json``); a relative
    path is relative to ``root``."""
    if manifest_path is None:
        from nuvom.config import get_settings

        manifest_path = get_settings().manifest_path
    path = Path(manifest_path)
    return path if path.is_absolute() else Path(root) / path


def load_manifest(path: Path | str) -> Manifest | None:
    """The manifest at ``path``; ``None`` when there is none.

    Raises :class:`ManifestError` when the file exists but is not a manifest
    this version can read; the message says to run ``nuvom discover tasks``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(f"task manifest {path} cannot be read ({exc.strerror})") from None
    try:
        # pydantic's own JSON parser: a third of the time of json.loads + validation.
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise _unusable(path, data, exc) from None
    if manifest.version != MANIFEST_VERSION:
        raise _unusable(path, data, None)
    return manifest


def _unusable(path: Path, data: bytes, exc: ValidationError | None) -> ManifestError:
    try:
        raw = json.loads(data)
    except ValueError as err:
        return ManifestError(f"task manifest {path} is not valid JSON ({err}); run `nuvom discover tasks`")
    version = raw.get("version") if isinstance(raw, dict) else None
    if version != MANIFEST_VERSION:
        return ManifestError(
            f"task manifest {path} has format version {version!r}, this nuvom reads version "
            f"{MANIFEST_VERSION}; run `nuvom discover tasks` to rebuild it"
        )
    count = exc.error_count() if exc is not None else 1
    return ManifestError(f"task manifest {path} is damaged ({count} invalid field(s)); run `nuvom discover tasks`")


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write ``manifest`` to ``path`` atomically, creating its folder.

    Raises :class:`DiscoveryError` when the file cannot be written."""
    try:
        _write(path, _render(manifest))
    except OSError as exc:
        raise DiscoveryError(
            f"cannot write the task manifest {path} ({exc.strerror or exc}); "
            "set NUVOM_MANIFEST_PATH to a writable place"
        ) from None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would hide the manifest from other users.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _render(manifest: Manifest) -> str:
    dumps = json.dumps
    lines = ["{"]
    for key in ("version", "generator", "parser_version", "scanned_at", "include", "exclude"):
        lines.append(f"  {dumps(key)}: {dumps(getattr(manifest, key))},")
    # One task per line, without its default values: half the size and a
    # faster load than pretty-printed objects, and still readable.
    tasks = [task.model_dump_json(exclude_defaults=True) for task in manifest.tasks]
    errors = [dumps(dataclasses.asdict(error), ensure_ascii=False) for error in manifest.errors]
    for key, items in (("tasks", tasks), ("errors", errors)):
        if items:
            lines.append(f'  "{key}": [')
            lines.append(",\n".join(f"    {item}" for item in items))
            lines.append("  ],")
        else:
            lines.append(f'  "{key}": [],')
    if manifest.files:
        lines.append('  "files": {')
        lines.append(",\n".join(f"    {dumps(k, ensure_ascii=False)}: {dumps(v)}" for k, v in manifest.files.items()))
        lines.append("  }")
    else:
        lines.append('  "files": {}')
    lines.append("}")
    return "\n".join(lines) + "\n"
