"""The worker side: register the manifest's tasks at start-up, watch in dev mode."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nuvom.config import EnvSettings, read_settings
from nuvom.discovery._loader import add_import_roots, register_tasks
from nuvom.discovery._manifest import ManifestError, load_manifest, manifest_path_for
from nuvom.plugins.contracts import API_VERSION, Plugin
from pydantic import Field

if TYPE_CHECKING:
    from nuvom.config import Settings
    from nuvom.discovery._watcher import DevWatcher
    from nuvom.registry import TaskRegistry

__all__ = ["DiscoveryPlugin", "DiscoverySettings"]

log = logging.getLogger("nuvom.discovery")


class DiscoverySettings(EnvSettings):
    """Settings of nuvom-discovery, read like core's (``NUVOM_*``, ``.env``)."""

    discovery_poll_secs: float = Field(
        1.0, gt=0, le=60, description="How often `runworker --dev` checks the source for changed tasks."
    )


def _discovery_settings() -> DiscoverySettings:
    return read_settings(DiscoverySettings)


class DiscoveryPlugin(Plugin):
    """Registers the tasks of the project's manifest in a starting worker.

    The project is the worker's working directory (or its plugin manager's
    ``project_dir``). Without a manifest nothing is registered and jobs are
    resolved by their import path, as without this package. With
    ``runworker --dev`` a :class:`~nuvom.discovery.DevWatcher` re-scans
    changed files and keeps the registry current.
    """

    api_version: ClassVar[str] = API_VERSION
    name: ClassVar[str] = "discovery"
    provides: ClassVar[list[str]] = ["tasks"]
    settings_class: ClassVar[type[EnvSettings]] = DiscoverySettings

    def __init__(self) -> None:
        self.root: Path | None = None
        self.manifest_path: Path | None = None
        self.registered = 0
        self.watcher: DevWatcher | None = None

    def start(self, settings: Settings, extras: dict[str, Any] | None = None) -> None:
        extras = extras or {}
        registry = extras.get("registry")
        if registry is None:
            from nuvom.registry import get_registry

            registry = get_registry()
        app = extras.get("app")
        self.root = Path(getattr(app, "project_dir", None) or Path.cwd()).resolve()
        self.manifest_path = manifest_path_for(self.root, settings.manifest_path)
        if extras.get("dev"):
            self._start_watcher(registry)
        else:
            self._register(registry)

    def _register(self, registry: TaskRegistry) -> None:
        assert self.root is not None and self.manifest_path is not None
        try:
            manifest = load_manifest(self.manifest_path)
        except ManifestError as exc:
            log.warning("%s; until then jobs find their tasks by import path", exc)
            return
        if manifest is None:
            log.info(
                "no task manifest at %s: run `nuvom discover tasks` to register tasks at start-up; "
                "until then jobs find their tasks by import path",
                self.manifest_path,
            )
            return
        add_import_roots(self.root, manifest.tasks)
        self.registered = register_tasks(registry, manifest.tasks, self.root)
        log.info("registered %d task(s) from %s", self.registered, self.manifest_path)

    def _start_watcher(self, registry: TaskRegistry) -> None:
        from nuvom.discovery._watcher import DevWatcher

        assert self.root is not None and self.manifest_path is not None
        include: list[str] = []
        exclude: list[str] = []
        try:
            previous = load_manifest(self.manifest_path)
        except ManifestError:
            previous = None
        if previous is not None:
            # Watch what `nuvom discover tasks` was told to scan.
            include, exclude = previous.include, previous.exclude
        interval = _discovery_settings().discovery_poll_secs
        self.watcher = DevWatcher(
            self.root, registry, self.manifest_path, interval=interval, include=include, exclude=exclude
        )
        report = self.watcher.start()
        self.registered = len({t.name for t in report.tasks})
        log.info("registered %d task(s) from a scan of %s", self.registered, self.root)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
