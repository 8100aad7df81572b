"""Flask-Limiter for the app: how often one client (by address) may store drawings, or ask for answers.

The counts live in RATELIMIT_STORAGE_URI: `memory://` (the default) counts in each process, so under
gunicorn's N workers one client gets up to N times the limit; a shared store (`redis://...`,
`memcached://...`) makes it exact. Behind a proxy, wrap the app in werkzeug's ProxyFix so the
client's address is the one counted.
"""

from __future__ import annotations

import secrets

from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address


def client() -> str:
    """Whom a limit counts: the client's address, within this app (a process may hold several apps,
    as the tests do, and one limiter serves them all)."""
    return f"{current_app.extensions['digitjax.limits']}:{get_remote_address()}"


limiter = Limiter(key_func=client)


def init_app(app: Flask) -> None:
    app.config.setdefault("RATELIMIT_STORAGE_URI", "memory://")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)  # Retry-After on every 429
    app.config.setdefault("RATELIMIT_STRATEGY", "moving-window")  # no burst of twice the limit at a window's edge
    app.extensions["digitjax.limits"] = secrets.token_hex(8)  # this app's part of every key
    limiter.init_app(app)


def configured(key: str):
    """A route's limit read from the app's config at each request (None or "" there: unlimited)."""

    def value() -> str:
        return current_app.config[key] or "1000000 per second"

    return limiter.limit(value, exempt_when=lambda: not current_app.config[key])
