"""Static task discovery for nuvom.

``discover_tasks(root)`` finds every ``@task`` function under a project
without importing anything and keeps ``.nuvom/manifest.json`` up to date;
:class:`DiscoveryPlugin` (entry point ``discovery`` in the ``nuvom`` group)
registers the manifest's tasks in a starting worker, and with
``runworker --dev`` watches the source and reloads changed tasks.
See docs/discovery.md.
"""

from __future__ import annotations

from nuvom.discovery._manifest import DiscoveryError, ManifestError, load_manifest, manifest_path_for, write_manifest
from nuvom.discovery._models import MANIFEST_VERSION, DiscoveryReport, Manifest, ScanError, TaskInfo
from nuvom.discovery._parser import module_name, parse_tasks
from nuvom.discovery._plugin import DiscoveryPlugin, DiscoverySettings
from nuvom.discovery._scan import discover_tasks
from nuvom.discovery._walker import DEFAULT_EXCLUDED_DIRS, IGNORE_FILE
from nuvom.discovery._watcher import DevWatcher

__all__ = [
    "DEFAULT_EXCLUDED_DIRS",
    "IGNORE_FILE",
    "MANIFEST_VERSION",
    "DevWatcher",
    "DiscoveryError",
    "DiscoveryPlugin",
    "DiscoveryReport",
    "DiscoverySettings",
    "Manifest",
    "ManifestError",
    "ScanError",
    "TaskInfo",
    "discover_tasks",
    "load_manifest",
    "manifest_path_for",
    "module_name",
    "parse_tasks",
    "write_manifest",
]
