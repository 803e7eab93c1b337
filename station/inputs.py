"""Files named on the command line (``station send``, ``station preview``): plain files,
folders (recursively) and zip archives, whose members are extracted under our own names."""

from __future__ import annotations

import itertools
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InputFile:
    path: Path  # a readable file on disk
    name: str  # how to name it to the user: its path, or "archive.zip:member/name"


def input_files(paths: list[Path], scratch: Path, problems: list[str]) -> Iterator[InputFile]:
    """Every file under ``paths``; zip members are extracted into ``scratch``. What cannot
    be read is described in ``problems``."""
    numbers = itertools.count()
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from _one(child, scratch, numbers, problems)
        elif path.is_file():
            yield from _one(path, scratch, numbers, problems)
        else:
            problems.append(f"{path}: no such file or folder")


def is_zip_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive, a damaged one too. ``zipfile.is_zipfile`` alone
    only looks for an end record signature near the end, which pixel data may contain: a
    DICOM file (``DICM`` after its 128-byte preamble) is never taken for an archive."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:] == b"DICM":
        return False
    return head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(path)


def _one(
    path: Path, scratch: Path, numbers: Iterator[int], problems: list[str]
) -> Iterator[InputFile]:
    if not is_zip_archive(path):
        yield InputFile(path, str(path))
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.is_dir():
                    continue
                # Never use the member's name as a path: it may point outside scratch.
                target = scratch / f"{next(numbers)}.dcm"
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                yield InputFile(target, f"{path}:{member.filename}")
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as exc:
        problems.append(f"{path}: cannot read the zip archive: {exc}")
