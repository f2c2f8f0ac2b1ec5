"""Finding, checking, starting and stopping plugins.

Two sources, merged: entry points in the ``nuvom`` group of every installed
distribution (the value names a :class:`Plugin` class), and
``.nuvom_plugins.toml`` in the project directory, where every list under
``[plugins]`` names ``module:Class`` targets whatever its key::

    [plugins]
    queue_backend = ["my_pkg.plugin:MyQueuePlugin"]
    prometheus = ["nuvom.prometheus:PrometheusPlugin"]

A target named both ways is loaded once. A plugin that fails to import
(``SystemExit`` and ``KeyboardInterrupt`` at import included), has the wrong
``api_version`` or raises in ``start()`` is recorded with its error and
logged; the others go on. Targets of the earlier nuvom resolve to their new
homes (:data:`nuvom._compat.MOVED_TARGETS`). Each app has its own manager.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom._backends import BackendTable, registering_into
from nuvom._compat import MOVED_TARGETS, moved_hint
from nuvom.errors import PluginError
from nuvom.plugins.contracts import API_VERSION, Plugin

if TYPE_CHECKING:
    from nuvom._settings import Settings


__all__ = [
    "BACKEND_ROLES",
    "ENTRY_POINT_GROUP",
    "PLUGINS_FILE",
    "PluginManager",
    "PluginRecord",
    "call_start",
    "check_plugin_class",
    "load_target",
    "read_plugins_file",
]

log = logging.getLogger("nuvom.plugins")

ENTRY_POINT_GROUP = "nuvom"
PLUGINS_FILE = ".nuvom_plugins.toml"
#: Roles started in every process that uses backends; all others only in workers.
BACKEND_ROLES = frozenset({"queue_backend", "result_backend"})


@dataclass
class PluginRecord:
    """What is known about one plugin: where it came from and how it fared."""

    target: str
    source: str
    name: str = ""
    provides: list[str] = field(default_factory=list)
    api_version: str = ""
    plugin: Plugin | None = None
    state: str = "found"  # found | loaded | started | stopped | failed
    error: str | None = None
    #: Listed in .nuvom_plugins.toml: the user asked for it explicitly, which is
    #: how plugins that open ports (exporters) know they are enabled.
    in_plugins_file: bool = False
    #: The earlier nuvom's path the user wrote, when ``target`` is its new home.
    moved_from: str | None = None
    #: Where it moved and how to install it, when ``moved_from`` is set.
    moved_hint: str | None = None

    @property
    def is_backend(self) -> bool:
        return bool(self.provides) and set(self.provides) <= BACKEND_ROLES


def read_plugins_file(path: Path) -> list[tuple[str, str]]:
    """``(target, source)`` pairs from a ``.nuvom_plugins.toml``; a malformed
    file raises :class:`PluginError` naming the file and line."""
    # Imported here: most processes have no such file, and the read commands of
    # the CLI start faster without the parser (bench/bench_cli.py).
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "at end of document" for unclosed brackets: give a line there too.
        where = str(exc).replace("at end of document", f"at line {text.count(chr(10)) + 1}, the end of the file")
        raise PluginError(f"{path}: not valid TOML ({where}); fix the file or remove it") from None
    except OSError as exc:
        raise PluginError(f"{path}: cannot be read ({exc.strerror})") from None
    section = data.get("plugins", {})
    if not isinstance(section, dict):
        raise PluginError(f"{path}: [plugins] must be a table of lists of 'module:Class' strings")
    out = []
    for key, targets in section.items():
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise PluginError(f"{path}: plugins.{key} must be a list of 'module:Class' strings")
        for target in targets:
            if ":" not in target:
                raise PluginError(f"{path}: plugins.{key}: {target!r} is not a 'module:Class' target")
            out.append((target, f"{PLUGINS_FILE} [{key}]"))
    return out


def load_target(target: str) -> Any:
    """Import ``module:attr`` (or a ``path/to/file.py:attr``)."""
    module_name, _, attr = target.partition(":")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        file = Path(module_name)
        spec = importlib.util.spec_from_file_location(file.stem, file)
        if spec is None or spec.loader is None:
            raise PluginError(f"{target}: cannot load {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[file.stem] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    if not attr:
        return module
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def check_plugin_class(obj: Any, target: str) -> type[Plugin]:
    """Return ``obj`` if it is a usable plugin class, else raise :class:`PluginError`."""
    if not isinstance(obj, type):
        raise PluginError(f"{target} is a {type(obj).__name__}, not a Plugin class")
    for attr in ("start", "stop"):
        if not callable(getattr(obj, attr, None)):
            raise PluginError(f"{target} has no {attr}() method; subclass nuvom.plugins.contracts.Plugin")
    version = str(getattr(obj, "api_version", "") or "")
    if version.split(".")[0] != API_VERSION.split(".")[0]:
        raise PluginError(
            f"{target} declares api_version {version!r} but this nuvom speaks {API_VERSION}; "
            "upgrade the plugin or nuvom"
        )
    return obj


def call_start(plugin: Plugin, settings: Settings, extras: dict[str, Any]) -> None:
    """Call ``start`` the way the plugin declared it: ``start(settings, extras)``,
    ``start(settings, **extras)`` (the earlier nuvom's exporter) or ``start(settings)``."""
    try:
        params = list(inspect.signature(plugin.start).parameters.values())
    except (TypeError, ValueError):
        plugin.start(settings, extras)
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params):
        plugin.start(settings, extras)
    elif any(p.kind is p.VAR_KEYWORD for p in params):
        plugin.start(settings, **extras)
    else:
        plugin.start(settings)


class PluginManager:
    """The plugins of one app. Backend classes that plugins register from
    ``start()`` go to ``backends`` (the app's table)."""

    def __init__(self, project_dir: Path | None = None, backends: BackendTable | None = None) -> None:
        self.project_dir = project_dir
        self.backends = backends if backends is not None else BackendTable()
        self.records: list[PluginRecord] = []
        self._discovered = False
        self._lock = threading.RLock()

    # -- discovery ------------------------------------------------------------
    def discover(self) -> list[PluginRecord]:
        """Find every plugin and import its class (idempotent)."""
        with self._lock:
            if self._discovered:
                return self.records
            found: dict[str, PluginRecord] = {}
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
                found.setdefault(ep.value, PluginRecord(ep.value, f"entry point ({dist})"))
            plugins_file = (self.project_dir or Path.cwd()) / PLUGINS_FILE
            if plugins_file.is_file():
                for target, source in read_plugins_file(plugins_file):
                    moved = MOVED_TARGETS.get(target)
                    record = found.setdefault(moved or target, PluginRecord(moved or target, source))
                    if moved is not None:
                        record.moved_from = target
                        record.moved_hint = moved_hint(target, moved)
                        log.info("plugin %s; loading %s", record.moved_hint, moved)
                    record.in_plugins_file = True
                    if record.source != source:
                        record.source = f"{record.source} + {source}"
            names: set[str] = set()
            for record in found.values():
                self._import(record)
                if record.name and record.name in names and record.state != "failed":
                    record.state, record.error = "failed", f"a plugin named {record.name!r} is already loaded"
                    continue
                names.add(record.name)
                self.records.append(record)
            self._discovered = True
            return self.records

    def _import(self, record: PluginRecord) -> None:
        target = record.target
        try:
            cls = check_plugin_class(load_target(target), target)
            record.name = str(getattr(cls, "name", "") or cls.__name__)
            record.provides = list(getattr(cls, "provides", []) or [])
            record.api_version = str(getattr(cls, "api_version", ""))
            record.plugin = cls()
            record.state = "loaded"
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # A plugin module that calls sys.exit() at import must not end the process.
            record.state, record.error = "failed", _describe(exc)
            if record.moved_from and isinstance(exc, ModuleNotFoundError):
                record.moved_hint = moved_hint(record.moved_from, target, installed=False)
                record.error = f"{record.error}: {record.moved_hint}"
            log.error("plugin %s (%s) could not be loaded: %s", record.target, record.source, record.error)

    # -- lifecycle ------------------------------------------------------------
    def start(
        self, settings: Settings, *, backends_only: bool = False, extras: dict[str, Any] | None = None
    ) -> list[PluginRecord]:
        """Start every loaded plugin not yet started (only backend plugins when
        ``backends_only``), ``requires`` first. Returns the newly started ones."""
        with self._lock:
            self.discover()
            by_name = {r.name: r for r in self.records if r.state != "failed"}
            started: list[PluginRecord] = []
            for record in self._ordered(by_name):
                if record.state != "loaded" or (backends_only and not record.is_backend):
                    continue
                missing = [n for n in getattr(record.plugin, "requires", []) or [] if n not in by_name]
                if missing:
                    record.state, record.error = "failed", f"requires missing plugin(s) {missing}"
                    log.error("plugin %s not started: %s", record.name, record.error)
                    continue
                try:
                    assert record.plugin is not None
                    with registering_into(self.backends):
                        call_start(
                            record.plugin, settings, {**(extras or {}), "enabled_in_file": record.in_plugins_file}
                        )
                    record.state = "started"
                    started.append(record)
                except Exception as exc:
                    record.state, record.error = "failed", _describe(exc)
                    log.error("plugin %s failed to start: %s", record.name, record.error)
            return started

    def _ordered(self, by_name: dict[str, PluginRecord]) -> list[PluginRecord]:
        out: list[PluginRecord] = []
        seen: set[str] = set()

        def visit(record: PluginRecord, stack: tuple[str, ...]) -> None:
            if record.name in seen or record.name in stack:
                return
            for dep in getattr(record.plugin, "requires", []) or []:
                if dep in by_name:
                    visit(by_name[dep], (*stack, record.name))
            seen.add(record.name)
            out.append(record)

        for record in self.records:
            if record.state != "failed":
                visit(record, ())
        return out

    def stop(self, *, worker_only: bool = False) -> None:
        """Stop started plugins in reverse order; errors are logged, not raised."""
        with self._lock:
            for record in reversed(self.records):
                if record.state != "started" or (worker_only and record.is_backend):
                    continue
                try:
                    assert record.plugin is not None
                    record.plugin.stop()
                    record.state = "stopped"
                except Exception as exc:
                    record.state, record.error = "failed", _describe(exc)
                    log.error("plugin %s failed to stop: %s", record.name, record.error)

    def started_plugins(self) -> list[Plugin]:
        return [r.plugin for r in self.records if r.state == "started" and r.plugin is not None]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PluginError):
        return str(exc)
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised while loading; the plugin called sys.exit()"
    return f"{type(exc).__name__}: {exc}"
