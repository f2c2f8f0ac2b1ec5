"""Names shared by the app and the command, in a module that imports nothing:
`nuvom --help` imports the command's module and must stay quick."""

from __future__ import annotations

__all__ = ["ALLOWED_HOSTS_ENV", "SECRET_ENV", "TOKEN_ENV"]

#: The environment variable holding the dashboard's token.
TOKEN_ENV = "NUVOM_DASHBOARD_TOKEN"
#: The secret that signs CSRF tokens; unset: a random one per app, so every
#: dashboard process behind one load balancer needs the same value.
SECRET_ENV = "NUVOM_DASHBOARD_SECRET"
#: More names the served dashboard answers to (comma separated), e.g. a proxy's.
ALLOWED_HOSTS_ENV = "NUVOM_DASHBOARD_ALLOWED_HOSTS"
