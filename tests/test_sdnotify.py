"""flying/sdnotify.py against a real AF_UNIX datagram socket (path and abstract)."""
from __future__ import annotations

import os
import socket

import pytest

from flying import sdnotify


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path, monkeypatch):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        s.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    else:
        name = f"flying-test-{os.getpid()}-{id(s)}"
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    s.settimeout(2)
    yield s
    s.close()


def test_helpers_send_datagrams(listener):
    assert sdnotify.ready() is True
    assert listener.recv(4096) == b"READY=1"
    assert sdnotify.status("warming\nworker group") is True
    assert listener.recv(4096) == b"STATUS=warming worker group"
    assert sdnotify.stopping() is True
    assert listener.recv(4096) == b"STOPPING=1"
    assert sdnotify.notify("READY=1\nSTATUS=ok") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=ok"


def test_unset_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.notify("READY=1") is False


def test_unreachable_socket_is_false_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@flying-nobody-listens-here")
    assert sdnotify.stopping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False
