"""msgpack encoding for job payloads and results.

msgpack, never pickle: a stored job is data, so reading one can never run code.
Tuples come back as lists and only msgpack's native types (None, bool, int,
float, str, bytes, list, dict) round-trip; anything else is refused loudly at
the edge (``.delay()`` or when a result is stored) rather than deep in a worker.
"""

from __future__ import annotations

from typing import Any

import msgpack
from nuvom.errors import SerializationError

__all__ = ["dumps", "loads"]


def _refuse(obj: object) -> Any:
    raise TypeError(f"cannot encode a value of type {type(obj).__qualname__}")


_packer_opts: dict[str, Any] = {"use_bin_type": True, "default": _refuse, "datetime": False}


def dumps(obj: Any, *, what: str = "value") -> bytes:
    """Encode ``obj`` with msgpack; ``what`` names it in the error message."""
    try:
        return msgpack.packb(obj, **_packer_opts)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
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
