"""The tree the discovery benchmark scans: a copy of the running Python's
standard library (real code, nearly none of it defining tasks) plus generated
application modules that each define four tasks in one of the forms users
write, up to a given number of ``.py`` files.

    python bench/bench_discovery_tree.py DEST [--files 5000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

STAMP = ".bench-tree"

# Folders of the standard library left out: installed packages, byte code, and
# any folder one of the two compared scanners skips by default (so both see the
# same files).
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "build", "dist", "node_modules", "migrations"}

_FORMS = [
    (
        "from nuvom.task import task",
        "@task",
        "@task(retries=2, tags=['io', 'batch'])",
        "@task(name='{n}_v2', timeout_secs=30)",
    ),
    (
        "from nuvom.task import task as t",
        "@t",
        "@t(retries=1, retry_delay_secs=0.5)",
        "@t(store_result=False, description='Nightly.')",
    ),
    ("import nuvom.task as nt", "@nt.task", "@nt.task(timeout_policy='retry')", "@nt.task(tags=('a',))"),
    ("import nuvom.task", "@nuvom.task.task", "@nuvom.task.task(retries=3)", "@nuvom.task.task(timeout_secs=5)"),
]

_MODULE = '''"""Generated module {i} of the discovery benchmark: order processing."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

{import_line}

log = logging.getLogger(__name__)
RATE_{i} = {rate}


@dataclass
class Order{i}:
    key: str
    amount: float
    lines: list[int] = field(default_factory=list)

    def total(self, quantity: int) -> float:
        return self.amount * quantity * RATE_{i}

    def describe(self) -> str:
        return f"{{self.key}}: {{self.amount:.2f}} ({{len(self.lines)}} lines)"


def _weigh_{i}(items: list[int]) -> int:
    out = 0
    for item in items:
        if item % 3 == 0:
            out += item * RATE_{i}
        elif item % 5 == 0:
            out -= item
        else:
            out ^= item
    return out


{deco0}
def process_{i}(items: list[int]) -> int:
    """Weigh a batch of items."""
    return _weigh_{i}(items)


{deco1}
async def fetch_{i}(url: str) -> dict:
    return {{"url": url, "module": {i}}}


{deco2}
def report_{i}(payload: str) -> str:
    data = json.loads(payload)
    log.info("report %s", data)
    return json.dumps(data, sort_keys=True)


{deco0}
def archive_{i}(key: str, *, days: int = 30) -> str:
    order = Order{i}(key, float(days))
    return order.describe()
'''


def generated_module(i: int) -> str:
    import_line, d0, d1, d2 = _FORMS[i % len(_FORMS)]
    return _MODULE.format(
        i=i, rate=i % 7 + 1, import_line=import_line, deco0=d0, deco1=d1, deco2=d2.format(n=f"report_{i}")
    )


def copy_stdlib(dest: Path) -> int:
    """Copy the ``.py`` files of the standard library to ``dest``; returns how many."""
    src = Path(sysconfig.get_paths()["stdlib"])
    count = 0
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if any(part in _SKIP_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        count += 1
    return count


def _packages(modules: int) -> int:
    return (modules + 99) // 100  # one __init__.py per 100 modules


def build_tree(dest: Path, files: int = 5000) -> dict[str, int]:
    """Build the tree at ``dest`` (reused when it was built with the same size)."""
    stamp = dest / STAMP
    if stamp.is_file() and stamp.read_text().strip() == str(files):
        counts = stamp.with_suffix(".counts").read_text().split()
        return {"stdlib": int(counts[0]), "generated": int(counts[1])}
    if dest.exists():
        shutil.rmtree(dest)
    stdlib = copy_stdlib(dest / "stdlib")
    remaining = max(0, files - stdlib)
    generated = remaining * 100 // 101
    while generated + _packages(generated) < remaining:
        generated += 1
    for i in range(generated):
        pkg = dest / "app" / f"area_{i // 100:03d}"
        if i % 100 == 0:
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_text("")
        (pkg / f"jobs_{i:05d}.py").write_text(generated_module(i))
    stamp.with_suffix(".counts").write_text(f"{stdlib} {generated + _packages(generated)}")
    stamp.write_text(str(files))
    return {"stdlib": stdlib, "generated": generated + _packages(generated)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    counts = build_tree(args.dest, args.files)
    print(f"{args.dest}: {counts['stdlib']} standard library files + {counts['generated']} generated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
