"""Value types of the configuration with their checks: AE titles, UIDs, networks, modes."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from station.dicom.uids import STORED, transfer_syntax_uid

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 printable chars, no backslash
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _ae_title(value: Any) -> Any:
    if isinstance(value, str) and (not _AE_TITLE.match(value) or not value.strip()):
        raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
    return value.strip() if isinstance(value, str) else value


def _uid(value: Any) -> Any:
    if isinstance(value, str) and (len(value) > 64 or not _UID.match(value)):
        raise ValueError("a UID is digits and dots, at most 64 characters, like 1.2.840.10008.1.2")
    return value


def _network(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(
                "an IP address or network (CIDR), like 10.0.0.7 or 10.0.0.0/24; "
                "host names are not resolved"
            ) from None
    return value


def _mode(value: Any) -> Any:
    """A permission mode: an octal string ("0640", "640") or the number YAML made of an
    unquoted 0640; rwx bits only (no setuid, setgid or sticky bit)."""
    if isinstance(value, str):
        if not re.fullmatch(r"0?[0-7]{3}", value.strip()):
            raise ValueError(f'{value!r} is not an octal permission mode such as "0640"')
        value = int(value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(f'{value!r} is not a permission mode between "0000" and "0777"')
    return value


AETitle = Annotated[str, BeforeValidator(_ae_title)]
def _preference(value: Any) -> Any:
    if isinstance(value, str) and value != STORED:
        return transfer_syntax_uid(value.strip())
    return value


UID = Annotated[str, BeforeValidator(_uid)]
# A destination's transfer syntax: UID or pydicom keyword, or "stored" (as received).
SyntaxPreference = Annotated[str, BeforeValidator(_preference)]
Network = Annotated[str, BeforeValidator(_network)]
# Written back (in JSON mode: docs/configuration.md) as the octal string it is given as.
Mode = Annotated[
    int, BeforeValidator(_mode), PlainSerializer(lambda mode: f"{mode:04o}", when_used="json")
]


class Model(BaseModel):
    """A config section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
