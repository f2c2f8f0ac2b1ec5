"""The hot statements (claim, group write, enqueue), sent
through the connection's libpq handle as server-side prepared statements.

psycopg's ``execute(..., prepare=True)`` builds a cursor, converts the query and
dumps each parameter through its adapters on every call: measured at several
times the client CPU of the libpq call itself here, for a statement
whose parameters are a handful of strings. These statements need none of
that: their parameters are strings (array literals built in one call), numbers
and bytes, sent as text; their rows come back in binary and are decoded by
column type. Each statement is prepared once per connection, under a name
derived from its text and its parameters' types. libpq releases the GIL while
it waits for the server, as psycopg does.

Errors are psycopg's own classes (built from the server's reply), so the
callers' handling (:func:`nuvom.postgres._db.is_transient`, unique violations)
is the same as for any other statement.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg import pq

__all__ = ["Prepared", "PreparedConnection"]

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%")

# Parameter types as psycopg would send them (text: "unknown", left to the
# server to infer from where the parameter stands).
_TEXT, _INT8, _FLOAT8, _BOOL, _BYTEA = 0, 20, 701, 16, 17

_INT8_AT = struct.Struct(">q").unpack
_INT4_AT = struct.Struct(">i").unpack
_INT2_AT = struct.Struct(">h").unpack
_FLOAT8_AT = struct.Struct(">d").unpack
_FLOAT4_AT = struct.Struct(">f").unpack


def _text(value: bytes) -> str:
    return value.decode()


def _bool(value: bytes) -> bool:
    return value != b"\x00"


# Binary decoders of the column types these statements return (others: the raw bytes).
_DECODERS: dict[int, Callable[[bytes], Any]] = {
    16: _bool,
    17: bytes,
    19: _text,
    20: lambda v: _INT8_AT(v)[0],
    21: lambda v: _INT2_AT(v)[0],
    23: lambda v: _INT4_AT(v)[0],
    25: _text,
    700: lambda v: _FLOAT4_AT(v)[0],
    701: lambda v: _FLOAT8_AT(v)[0],
    705: _text,
    1043: _text,
}


class PreparedConnection(psycopg.Connection[Any]):
    """A connection that remembers which :class:`Prepared` statements it holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nuvom_prepared: set[bytes] = set()


def _param(value: Any) -> tuple[bytes | None, int]:
    """A parameter as text, and its type."""
    if value is None:
        return None, _TEXT
    if isinstance(value, str):
        return value.encode(), _TEXT
    if isinstance(value, bool):
        return (b"t" if value else b"f"), _BOOL
    if isinstance(value, int):
        return str(value).encode(), _INT8
    if isinstance(value, float):
        return repr(value).encode(), _FLOAT8
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"\\x" + bytes(value).hex().encode(), _BYTEA
    raise TypeError(f"a prepared statement's parameter cannot be a {type(value).__name__}")


class Prepared:
    """One statement written with ``%(name)s`` placeholders, run by name on
    any :class:`PreparedConnection` (prepared there on first use)."""

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                raise ValueError(f"a bare '%' in a prepared statement: {sql[:80]!r}")
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.text = _PLACEHOLDER.sub(number, sql).encode()
        self.names = tuple(names)
        self._digest = hashlib.sha1(self.text).hexdigest()[:16]

    def rows(self, conn: psycopg.Connection[Any], params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement (autocommit: one transaction) and return its rows."""
        # NULLs are None (libpq's NULL pointer), which psycopg's stubs leave out.
        values: list[Any] = []
        types: list[int] = []
        for key in self.names:
            value, oid = _param(params[key])
            values.append(value)
            types.append(oid)
        name = f"nuvom_{self._digest}_{'_'.join(map(str, types))}".encode()
        pgconn = conn.pgconn
        held: set[bytes] | None = getattr(conn, "nuvom_prepared", None)
        if held is None or name not in held:
            _check(pgconn.prepare(name, self.text, types), pgconn)
            if held is not None:
                held.add(name)
        result = pgconn.exec_prepared(name, values, result_format=1)
        if held is not None and result.error_field(pq.DiagnosticField.SQLSTATE) == _NO_SUCH_STATEMENT:
            # Someone deallocated it on this connection (DEALLOCATE ALL, DISCARD ALL): prepare it again.
            held.clear()
            _check(pgconn.prepare(name, self.text, types), pgconn)
            held.add(name)
            result = pgconn.exec_prepared(name, values, result_format=1)
        _check(result, pgconn)
        if held is None:
            _check(pgconn.exec_(b"DEALLOCATE " + name), pgconn)
        n = result.ntuples
        if not n:
            return []
        get, rows = result.get_value, range(n)
        columns = []
        for k in range(result.nfields):
            decode = _DECODERS.get(result.ftype(k), bytes)
            cells = [get(i, k) for i in rows]
            columns.append([None if v is None else decode(v) for v in cells])
        return list(zip(*columns, strict=True))


def _check(result: pq.abc.PGresult, pgconn: pq.abc.PGconn) -> None:
    if result.status not in _OK:
        if result.status == pq.ExecStatus.FATAL_ERROR and result.error_field(pq.DiagnosticField.SQLSTATE):
            raise psycopg.errors.error_from_result(result, encoding="utf-8")
        raise psycopg.OperationalError(
            (result.error_message or pgconn.error_message).decode(errors="replace").strip() or "the statement failed"
        )
