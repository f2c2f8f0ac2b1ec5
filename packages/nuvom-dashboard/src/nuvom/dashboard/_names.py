"""Names shared by the app and the command, in a module that imports nothing:
`nuvom --help` imports the command's module and must stay quick."""

from __future__ import annotations

__all__ = ["TOKEN_ENV"]

#: The environment variable holding the dashboard's token.
TOKEN_ENV = "NUVOM_DASHBOARD_TOKEN"
