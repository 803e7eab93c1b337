"""What stops a configuration from starting, named by its setting: a port another process
holds, a storage folder that cannot be written. ``station check`` asks these before
``station run`` would fail on them; ``run`` words its own failures the same way."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from station.config import StationConfig

BIND_PROBLEMS = {
    errno.EADDRINUSE: "is in use",
    errno.EACCES: "needs privileges (ports below 1024: run as root or grant CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "is not an address of this machine",
}


def bind_problem(key: str, host: str, port: int, exc: OSError) -> str:
    """``metrics.port 127.0.0.1:9108 is in use``: the failure to bind, named by its key."""
    problem = BIND_PROBLEMS.get(exc.errno or 0, f"cannot be bound: {exc.strerror or exc}")
    return f"{key} {host}:{port} {problem}"


def listeners(config: StationConfig) -> list[tuple[str, str, int]]:
    """(key, host, port) of every socket the station listens on."""
    found = [("listen.port", config.listen.host, config.listen.port)]
    if config.metrics.enabled:
        found.append(("metrics.port", config.metrics.host, config.metrics.port))
    return found


def port_problems(config: StationConfig) -> list[str]:
    """Listening ports that cannot be bound now (port 0, any free port, always can)."""
    problems = []
    for key, host, port in listeners(config):
        if port == 0:
            continue
        try:
            socket.create_server((host, port)).close()
        except OSError as exc:
            problems.append(bind_problem(key, host, port, exc))
    return problems


def storage_problem(path: Path) -> str | None:
    """Why the station could not create and write its storage folder, or None."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"storage {path}: {existing} is not a folder"
    try:  # a real write: permission bits say nothing of root, read-only mounts or /proc
        os.rmdir(tempfile.mkdtemp(prefix=".station-check-", dir=existing))
    except OSError as exc:
        whose = "" if existing == path else f" (to create {path})"
        return f"storage {path}: cannot write in {existing}{whose}: {exc.strerror or exc}"
    return None
