"""The earlier nuvom's import path for backend registration; the functions
live in :mod:`nuvom.backends`, beside the lookup."""

from __future__ import annotations

from nuvom.backends import register_queue_backend, register_result_backend

__all__ = ["register_queue_backend", "register_result_backend"]
