"""Statements run on the caller's own connection, in its open transaction
(``task.delay_in(connection, ...)``).

What a "connection" is depends on the library that opened it; each is used
through its own public API, and none of them is imported here:

* a DB-API connection (psycopg 3, psycopg2, or anything with ``cursor()``
  taking ``%(name)s`` parameters): a cursor of it;
* Django's ``django.db.connection`` (or ``connections["default"]``): its
  ``cursor()``, which joins the current ``transaction.atomic()`` block;
* a SQLAlchemy ``Connection``: ``exec_driver_sql``, in its current transaction;
* a SQLAlchemy ``Session``: its ``connection()`` (the one its transaction uses).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from nuvom.errors import BackendError

__all__ = ["execute_in"]


def execute_in(connection: Any, statement: str, params: Mapping[str, Any]) -> None:
    """Run ``statement`` (``%(name)s`` parameters) on ``connection``, in its transaction."""
    if callable(getattr(connection, "get_bind", None)) and callable(getattr(connection, "connection", None)):
        connection = connection.connection()  # a SQLAlchemy Session: the connection of its transaction
    if callable(getattr(connection, "exec_driver_sql", None)):
        connection.exec_driver_sql(statement, dict(params))  # a SQLAlchemy Connection
        return
    cursor_of = getattr(connection, "cursor", None)
    if not callable(cursor_of):
        raise BackendError(
            f"task.delay_in() needs a database connection (psycopg, psycopg2, a SQLAlchemy Connection or Session, "
            f"Django's connection); got {type(connection).__name__}"
        )
    cursor = cursor_of()
    try:
        result = cursor.execute(statement, params)
        if inspect.isawaitable(result):
            result.close()  # type: ignore[attr-defined]
            raise BackendError(
                f"task.delay_in() got an asynchronous connection ({type(connection).__name__}); "
                "pass a synchronous one (its transaction is the one the job joins)"
            )
    finally:
        closed = cursor.close()
        if inspect.isawaitable(closed):
            closed.close()  # type: ignore[attr-defined]
