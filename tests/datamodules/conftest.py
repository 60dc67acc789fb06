"""The data module tests never use the network: downloads are on by default, so a test that forgot
``download=False`` where files are missing must fail at once, not wait on a server."""

from __future__ import annotations

import socket

import pytest


class NetworkUsed(OSError):
    """Raised by any attempt to resolve a host name or open a connection during a data module test."""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkUsed("the data module tests do not use the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
