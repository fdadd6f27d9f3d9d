"""Fixtures that serve the Sparkfly sandbox over real loopback HTTP.

Each sandbox runs in a background thread on a free port and is shut down when the test ends.
The objects yielded are ``sparkfly_sync.sandbox.SandboxServer``: ``.base_url`` to talk to,
``.sandbox`` for the in-process helpers (faults, request log, callbacks, state).
"""

from __future__ import annotations

import pytest

from sparkfly_sync.sandbox import SparkflySandbox, serve_in_thread

# Small enough to seed in milliseconds, big enough for two member pages at per_page=25.
SMALL_SANDBOX = {"members": 50, "offers": 10, "channels": 3, "merchants": 2, "stores_per_merchant": 3, "seed": 0}


@pytest.fixture
def sparkfly_sandbox_factory():
    """``start(**kwargs)`` serves a fresh sandbox; kwargs override the small defaults."""
    servers = []

    def start(**kwargs):
        server = serve_in_thread(SparkflySandbox(**{**SMALL_SANDBOX, **kwargs}))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def sparkfly_sandbox(sparkfly_sandbox_factory):
    """A fresh small seeded sandbox (50 members, 10 offers, 3 channels, 2 merchants x 3 stores)."""
    return sparkfly_sandbox_factory()


# The Attentive sandbox, for tests that follow an event from Sparkfly to Attentive.
from tests.attentive_sync.conftest import attentive_sandbox, attentive_sandbox_factory, attentive_spec  # noqa: E402,F401
