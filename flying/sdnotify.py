"""Minimal sd_notify client: READY=1 / STOPPING=1 / STATUS=... to $NOTIFY_SOCKET.

No dependency. systemd (Type=notify) sets NOTIFY_SOCKET to a path or, with a leading '@', to a
Linux abstract socket name. Without it (a plain shell, a container) every call is a no-op that
returns False; a send that fails returns False too: notifying never breaks the service.
"""
from __future__ import annotations

import os
import socket


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()   # abstract namespace
    return path


def notify(state: str) -> bool:
    """Send one notification ("READY=1", "STATUS=...", several lines allowed); True if sent."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return False   # unset, or a kind we do not speak (vsock:...)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), _address(path))
        return True
    except OSError:
        return False


def ready() -> bool:
    return notify("READY=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """One line of free text that `systemctl status` shows."""
    return notify("STATUS=" + " ".join(text.splitlines()))
