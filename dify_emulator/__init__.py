"""A faithful fake of Dify's service API (`/v1`), for tests, benchmarks and demos.

Run it with `python -m dify_emulator`; start it from tests with
`dify_emulator.control.start_emulator()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]


def create_app(apps: list[dict[str, Any]] | None = None) -> Flask:
    """Build the emulator's WSGI app (see `dify_emulator.app.create_app`).

    The import is deferred so that `python -m dify_emulator` does not load Flask
    in gunicorn's master process, before the gevent worker monkey-patches.
    """
    from .app import create_app as build

    return build(apps)
