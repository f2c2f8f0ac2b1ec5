"""Finding ``@task`` functions in source text, by static analysis only.

Nothing is imported or executed. A function is a task when it is defined at
module level (also inside a module-level ``if``/``try``/``with`` block) and
one of its decorators is nuvom's ``task``, written in any of these forms::

    from nuvom.task import task          @task / @task(...)
    from nuvom.task import task as t     @t / @t(...)
    from nuvom.task import *             @task
    import nuvom.task                    @nuvom.task.task(...)
    import nuvom.task as nt              @nt.task(...)
    from nuvom import task as m          @m.task(...)

A bare ``task`` that no import in the file binds (a star import from a
module of the project, say) is taken to be nuvom's; a ``task`` imported by
name from anywhere else (``from celery import task``) is not. Methods and
nested functions are never tasks: the worker could not import them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from nuvom.discovery._models import ScanError, TaskInfo
from nuvom.job import TaskOptions
from pydantic import ValidationError

__all__ = ["PARSER_VERSION", "ParsedFile", "might_define_tasks", "module_name", "parse_tasks"]

#: Bumped whenever the parser finds something different in the same source;
#: a manifest written by another version is re-parsed in full.
PARSER_VERSION = 1

# Every form above puts either "nuvom" in the file (the import) or a decorator
# whose last name is "task" on a line of its own. Files with neither (nearly
# all files of a large project) are not parsed at all: reading and searching
# them costs about a hundredth of building their syntax tree.
_TASK_DECORATOR = re.compile(rb"^[ \t]*@[ \t(]*(?:\w+[ \t]*\.[ \t]*)*task\b", re.MULTILINE)

_NUVOM_TASK_MODULE = "nuvom.task"

# Kinds of names bound by imports.
_DECORATOR, _TASK_MODULE, _PACKAGE, _OTHER = "decorator", "module", "package", "other"
# Statements whose bodies still run at import time (module level).
_BLOCKS: tuple[type[ast.stmt], ...] = (ast.If, ast.Try, ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)
if hasattr(ast, "TryStar"):  # Python 3.11+
    _BLOCKS = (*_BLOCKS, ast.TryStar)


@dataclass
class ParsedFile:
    tasks: list[TaskInfo] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    parsed: bool = False  # False when the quick check showed there could be no task


def might_define_tasks(source: bytes) -> bool:
    """A cheap test that is true for every file defining a task (and a few others)."""
    return b"task" in source and (b"nuvom" in source or _TASK_DECORATOR.search(source) is not None)


def module_name(rel: str, *, strip_src: bool = False) -> str:
    """The dotted module path of ``rel`` (a POSIX path relative to the root).

    ``pkg/__init__.py`` is ``pkg``; with ``strip_src`` (a ``src/`` folder that
    is not itself a package: the src layout) ``src/pkg/mod.py`` is ``pkg.mod``.
    """
    parts = rel[:-3].split("/") if rel.endswith(".py") else rel.split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    if strip_src and len(parts) > 1 and parts[0] == "src":
        parts = parts[1:]
    return ".".join(parts)


def parse_tasks(source: bytes, rel: str, module: str) -> ParsedFile:
    """The tasks defined in ``source`` (the bytes of file ``rel``).

    Errors (a syntax error, a task name that is not a literal, an argument
    of the wrong type) are returned with the file and line, never raised.
    """
    out = ParsedFile()
    if not might_define_tasks(source):
        return out
    out.parsed = True
    try:
        tree = ast.parse(source, filename=rel)
    except SyntaxError as exc:
        out.errors.append(ScanError(rel, exc.lineno, f"syntax error: {exc.msg}"))
        return out
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
        out.errors.append(ScanError(rel, None, f"cannot be parsed: {exc}"))
        return out
    bindings = _import_bindings(tree)
    for node in _module_level_functions(tree.body):
        decorator = _task_decorator(node, bindings)
        if decorator is not None:
            info = _task_info(node, decorator, rel, module, out.errors)
            if info is not None:
                out.tasks.append(info)
    return out


# -- imports ------------------------------------------------------------------
def _import_bindings(tree: ast.Module) -> dict[str, str]:
    """Map each name bound by an import anywhere at module level to its kind."""
    names: dict[str, str] = {}
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is None:
                    top = alias.name.partition(".")[0]
                    names[top] = _PACKAGE if top == "nuvom" else _OTHER
                elif alias.name == _NUVOM_TASK_MODULE:
                    names[alias.asname] = _TASK_MODULE
                else:
                    names[alias.asname] = _OTHER
        elif isinstance(node, ast.ImportFrom):
            source = "." * node.level + (node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    if source == _NUVOM_TASK_MODULE:
                        names["task"] = _DECORATOR
                    continue
                bound = alias.asname or alias.name
                if source == _NUVOM_TASK_MODULE and alias.name == "task":
                    names[bound] = _DECORATOR
                elif source == "nuvom" and alias.name == "task":
                    names[bound] = _TASK_MODULE
                else:
                    names[bound] = _OTHER
    return names


def _module_level(body: list[ast.stmt]) -> Any:
    for node in body:
        yield node
        if isinstance(node, _BLOCKS):
            for attr in ("body", "orelse", "finalbody"):
                yield from _module_level(getattr(node, attr, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)
        elif isinstance(node, ast.Match):
            for case in node.cases:
                yield from _module_level(case.body)


def _module_level_functions(body: list[ast.stmt]) -> Any:
    for node in _module_level(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
            yield node


# -- decorators ---------------------------------------------------------------
def _task_decorator(node: ast.FunctionDef | ast.AsyncFunctionDef, bindings: dict[str, str]) -> ast.expr | None:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _is_task(target, bindings):
            return decorator
    return None


def _is_task(expr: ast.expr, bindings: dict[str, str]) -> bool:
    if isinstance(expr, ast.Name):
        kind = bindings.get(expr.id)
        return kind == _DECORATOR or (kind is None and expr.id == "task")
    parts = _dotted(expr)
    if parts is None or parts[-1] != "task":
        return False
    if len(parts) == 2:
        return bindings.get(parts[0]) == _TASK_MODULE
    if len(parts) == 3 and parts[:2] == ["nuvom", "task"]:
        return bindings.get("nuvom", _PACKAGE) == _PACKAGE
    return False


def _dotted(expr: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    parts.append(expr.id)
    return parts[::-1]


# -- arguments ----------------------------------------------------------------
# The decorator's options are checked by core's TaskOptions, the model @task
# itself validates with: discovery accepts exactly what importing would.
_OPTIONS = frozenset(TaskOptions.model_fields) | {"category"}


def _check_option(name: str, value: Any) -> tuple[dict[str, Any], str | None]:
    """``({field: value}, None)`` as @task would take ``name=value``, or ``({}, why not)``."""
    if isinstance(value, (set, frozenset)):
        value = sorted(value)
    try:
        options = TaskOptions.model_validate({name: value})
    except ValidationError as exc:
        return {}, exc.errors()[0]["msg"]
    if name == "category":
        return {"tags": options.tags}, None
    return {name: getattr(options, name)}, None


# Hooks are code, not metadata: never captured, and not worth a warning.
_HOOKS = frozenset({"before_job", "after_job", "on_error"})


def _task_info(
    node: ast.FunctionDef | ast.AsyncFunctionDef, decorator: ast.expr, rel: str, module: str, errors: list[ScanError]
) -> TaskInfo | None:
    fields: dict[str, Any] = {}
    dynamic: list[str] = []
    if isinstance(decorator, ast.Call):
        for kw in decorator.keywords:
            if kw.arg is None:
                dynamic.append("**" + ast.unparse(kw.value))
                continue
            if kw.arg == "schedule":
                schedule = _schedule_literal(kw.value)
                if schedule is None:
                    dynamic.append("schedule")
                else:
                    fields["schedule"] = schedule
                continue
            if kw.arg in _HOOKS or (kw.arg not in _OPTIONS and kw.arg != "name"):
                continue
            try:
                value = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                if kw.arg == "name":
                    errors.append(
                        ScanError(
                            rel,
                            kw.value.lineno,
                            f"@task {node.name}: name= is not a string literal, so discovery cannot know the "
                            "task's name; write the name literally (the task still runs from a job's import path)",
                        )
                    )
                    return None
                dynamic.append(kw.arg)
                continue
            if kw.arg == "name":
                if not (isinstance(value, str) and value):
                    errors.append(
                        ScanError(rel, kw.value.lineno, f"@task {node.name}: name={value!r} is not a non-empty string")
                    )
                    continue
                fields["name"] = value
                continue
            checked, why = _check_option(kw.arg, value)
            if why is not None:
                errors.append(
                    ScanError(
                        rel,
                        kw.value.lineno,
                        f"@task {node.name}: {kw.arg}={value!r} is not valid ({why}); importing it will fail",
                    )
                )
                continue
            if "tags" in checked and "tags" in fields:
                checked = {"tags": (*fields["tags"], *checked["tags"])}
            fields.update(checked)
    if "description" not in fields and "description" not in dynamic:
        fields["description"] = _first_line(ast.get_docstring(node, clean=False))
    return TaskInfo(
        name=fields.pop("name", node.name),
        module=module,
        qualname=node.name,
        file=rel,
        line=node.lineno,
        is_async=isinstance(node, ast.AsyncFunctionDef),
        dynamic_args=dynamic,
        **fields,
    )


def _schedule_literal(value: ast.expr) -> str | None:
    """``schedule="*/5 * * * *"`` or ``schedule=every(300)`` as written; ``None`` if not literal."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    if isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords:
        func = value.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        arg = value.args[0]
        number = arg.value if isinstance(arg, ast.Constant) else None
        if name == "every" and isinstance(number, (int, float)) and not isinstance(number, bool):
            return f"every {float(number):g}s"
    return None


def _first_line(doc: str | None) -> str | None:
    # The same rule as nuvom.task.Task, so that both agree on a description.
    if not doc:
        return None
    return doc.strip().splitlines()[0].strip() or None
