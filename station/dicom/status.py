"""DIMSE status codes (PS3.7 annex C, PS3.4 B.2.3) and how they are shown."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """The statuses the station answers with, or checks for by name."""

    SUCCESS = 0x0000
    WARNING = 0x0001
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    UNRECOGNIZED_OPERATION = 0x0211
    OUT_OF_RESOURCES = 0xA700
    DATASET_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC210


# Warning statuses of C-STORE (PS3.4 B.2.3) and the general 0x0001 (PS3.7 C.3).
WARNINGS = {
    Status.WARNING: "warning",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}


def describe_status(code: int, comment: str = "") -> str:
    """A status as the journal and ``station status`` show it: code, meaning, comment."""
    name = WARNINGS.get(code) or status_category(code).lower()
    return f"0x{code:04X} ({name})" + (f": {comment}" if comment else "")


def status_category(code: int) -> str:
    """Success, Warning, Failure, Cancel or Pending (PS3.7 annex C)."""
    if code == Status.SUCCESS:
        return "Success"
    if code in (Status.WARNING, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return "Warning"
    if code == 0xFE00:
        return "Cancel"
    if code in (0xFF00, 0xFF01):
        return "Pending"
    return "Failure"

