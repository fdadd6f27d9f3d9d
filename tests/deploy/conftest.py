"""Fixtures the deploy tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def servers():
    """``start(server)`` keeps a loopback server (a sandbox's ``serve_in_thread``) to shut down after the test."""
    started = []

    def start(server):
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
