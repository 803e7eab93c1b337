"""``station install-service``: the systemd unit, its sysusers and tmpfiles files, a config and
example routes, where systemd and the unit look for them.

Paths inside the files are those of the target system (``/etc/station``,
``/var/lib/station``) whatever ``root`` they are written under, so a package build or a test
can install into a staging folder. An existing config or routes folder is never touched; the
unit and the sysusers/tmpfiles files are replaced (local changes to the unit belong in a
drop-in, ``systemctl edit station``).
"""

from __future__ import annotations

import os
import re
import site
import sys
from dataclasses import dataclass
from pathlib import Path

import station
from station.errors import ConfigError

UNIT = Path("etc/systemd/system/station.service")
SYSUSERS = Path("etc/sysusers.d/station.conf")
TMPFILES = Path("etc/tmpfiles.d/station.conf")
CONFIG = Path("etc/station/station.yaml")
ROUTES = Path("etc/station/routes")
UNIT_COMMAND = "/usr/local/bin/station"  # ExecStart in systemd/station.service
# examples/station.yaml's paths are relative to examples/; for the service they are these.
SERVICE_PATHS = {"../station-data": "/var/lib/station", "../routes": "/etc/station/routes"}
CONFIG_HEADER = """\
# station's configuration as a service (systemd/station.service), written by
# `station install-service` from examples/station.yaml, and never overwritten by it.
# Check a change with `station check --config /etc/station/station.yaml`, then
# `systemctl reload station` (routes, plugins) or `systemctl restart station` (the rest).
"""
CONFIG_WATCH = """
watch:                           # the unit lets the station write under /srv/station only
  - path: /srv/station/dropbox   # created by /etc/tmpfiles.d/station.conf, group station
    after: delete
"""
HIDDEN_BY_UNIT = (Path("/root"), Path("/home"), Path("/run/user"))  # ProtectHome=yes


@dataclass(frozen=True)
class Installed:
    path: Path
    action: str  # written, or kept (it existed)


def source_dir() -> Path:
    """The folder with ``systemd/``, ``examples/`` and ``routes/``: the source tree this
    module runs from, or ``share/station`` of the installation (where a wheel puts them:
    the venv's or the interpreter's prefix, or the user base of ``pip install --user``)."""
    candidates = [
        Path(station.__file__).resolve().parents[1],
        *(Path(p) / "share" / "station" for p in (sys.prefix, site.getuserbase())),
    ]
    for base in candidates:
        if (base / "systemd" / "station.service").is_file():
            return base
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"systemd/station.service is in none of {looked}: reinstall station")


def station_command() -> str:
    """How systemd starts this installation: its ``station`` script, else ``python -m``."""
    script = Path(sys.executable).parent / "station"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m station"


def hidden_paths() -> list[Path]:
    """Parts of this installation (interpreter, package) the unit's ProtectHome=yes hides."""
    used = [Path(sys.executable).resolve(), Path(station.__file__).resolve()]
    return [p for p in used if any(p.is_relative_to(h) for h in HIDDEN_BY_UNIT)]


def service_unit(template: str, command: str) -> str:
    if f"ExecStart={UNIT_COMMAND} " not in template:
        raise ConfigError(f"station.service: no 'ExecStart={UNIT_COMMAND} ...' line to adapt")
    return template.replace(f"ExecStart={UNIT_COMMAND} ", f"ExecStart={command} ")


def service_config(example: str) -> str:
    """examples/station.yaml with the service's paths and a drop folder it may write to."""
    body = example.lstrip()
    while body.startswith("#"):  # the example's own introduction
        body = body.partition("\n")[2]
    olds = "|".join(map(re.escape, SERVICE_PATHS))
    pattern = rf"(?P<key>:[ ]+)(?P<old>{olds})(?P<rest>/\S*|)(?P<gap>[ ]*)(?P<comment>#.*)?$"

    def moved(match: re.Match[str]) -> str:
        value = SERVICE_PATHS[match["old"]] + match["rest"]
        if not match["comment"]:
            return match["key"] + value
        # the comment stays in its column when the new value leaves room
        gap = max(1, len(match["gap"]) + len(match["old"]) + len(match["rest"]) - len(value))
        return match["key"] + value + " " * gap + match["comment"]

    body = re.sub(pattern, moved, body, flags=re.M)
    return CONFIG_HEADER + body.rstrip("\n") + "\n" + CONFIG_WATCH


def install_service(root: Path, command: str | None = None) -> list[Installed]:
    """Write the unit, sysusers, tmpfiles, config and routes under ``root``; return each
    with what was done. Raises OSError when a file cannot be written."""
    source = source_dir()
    systemd = source / "systemd"
    command = command or station_command()
    done: list[Installed] = []

    def write(target: Path, text: str, replace: bool = True) -> None:
        path = root / target
        if path.exists() and not replace:
            done.append(Installed(path, "kept"))
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        done.append(Installed(path, "written"))

    write(UNIT, service_unit((systemd / "station.service").read_text(), command))
    write(SYSUSERS, (systemd / "station.sysusers.conf").read_text())
    write(TMPFILES, (systemd / "station.tmpfiles.conf").read_text())
    write(CONFIG, service_config((source / "examples" / "station.yaml").read_text()), False)
    if (root / ROUTES).exists():
        done.append(Installed(root / ROUTES, "kept"))
    else:
        for route in sorted((source / "routes").glob("*.yaml")):
            write(ROUTES / route.name, route.read_text())
    return done
