"""msgpack encoding for job payloads and results.

msgpack, never pickle: a stored job is data, so reading one can never run code.
Tuples come back as lists and only msgpack's native types (None, bool, int,
float, str, bytes, list, dict) round-trip; anything else is refused loudly at
the edge (``.delay()`` or when a result is stored) rather than deep in a worker.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack  # type: ignore[import-untyped]
from nuvom.errors import SerializationError

__all__ = ["SMALL_SCALAR_BYTES", "dumps", "is_small_scalar", "loads"]


#: The most bytes msgpack takes for a value :func:`is_small_scalar` accepts.
SMALL_SCALAR_BYTES = 9
_SMALL_SCALARS = frozenset({type(None), bool, int, float})


def is_small_scalar(value: Any) -> bool:
    """Whether ``value`` is None, a bool, a float or an int within 64 bits: what
    msgpack encodes in :data:`SMALL_SCALAR_BYTES` at most. The size checks of
    arguments and results skip encoding such values (the common trivial job)."""
    kind = type(value)
    return kind in _SMALL_SCALARS and (kind is not int or -(2**63) <= value < 2**64)


def _refuse(obj: object) -> Any:
    raise TypeError(f"cannot encode a value of type {type(obj).__qualname__}")


# A Packer per thread: msgpack.packb builds a new Packer on every call, which
# was measured as most of the cost of encoding a small job.
_local = threading.local()


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, default=_refuse, datetime=False)
    return packer


def dumps(obj: Any, *, what: str = "value") -> bytes:
    """Encode ``obj`` with msgpack; ``what`` names it in the error message."""
    packer = _packer()
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        packer.reset()  # a failed pack leaves partial bytes in the buffer
        raise SerializationError(
            f"{what} cannot be serialized with msgpack ({exc}); pass only None, bool, int, "
            "float, str, bytes, lists and dicts of them"
        ) from None


def loads(data: bytes, *, what: str = "payload") -> Any:
    """Decode msgpack bytes; corrupt input raises :class:`SerializationError`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise SerializationError(f"{what} is not valid msgpack ({type(exc).__name__}: {exc})") from None
