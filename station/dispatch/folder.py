"""``type: folder`` destinations: files under ``<path>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

Each file is written under a temporary name, fsynced and renamed into place, so a reader
never sees half a file. Untransformed instances are hard-linked from the spool when the
destination is on the same file system (the spool's later deletion leaves them intact).
Files get ``file_mode`` and new folders ``folder_mode`` (0600 and 0700 unless configured),
whatever the umask; a hard link shares its mode with the spool file, which stays
unreachable to others inside the spool's 0700 folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from station.config import FolderDestinationConfig
from station.dicom.files import is_uid
from station.dispatch.base import Prepare, SendResult
from station.errors import TransientSendError
from station.store.records import Instance
from station.store.spool import fsync_dir, make_folder


class FolderDestination:
    def __init__(self, name: str, config: FolderDestinationConfig) -> None:
        self.name = name
        self.root = config.path
        self.file_mode = config.file_mode
        self.folder_mode = config.folder_mode

    def send(self, instances: list[Instance], prepare: Prepare) -> SendResult:
        result = SendResult()
        folders: set[Path] = set()
        for inst in instances:
            try:
                written = self._write(inst, prepare)
            except FileNotFoundError:
                result.failed[inst.sop_uid] = f"spool file {inst.path} is missing"
                continue
            except OSError as exc:
                raise TransientSendError(f"cannot write under {self.root}: {exc}") from exc
            except Exception as exc:
                result.failed[inst.sop_uid] = f"transform failed: {type(exc).__name__}: {exc}"
                continue
            folders.add(written.parent)
            result.sent += 1
        for folder in folders:
            fsync_dir(folder)
        return result

    def _write(self, inst: Instance, prepare: Prepare) -> Path:
        dataset = prepare(inst) if prepare else None
        uids: tuple[str, ...] = (inst.study_uid, inst.series_uid, inst.sop_uid)
        if dataset is not None:
            # A transform may have given the instance new UIDs: name the file by those.
            changed = tuple(
                str(dataset.get(k, ""))
                for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            )
            uids = tuple(
                new if is_uid(new) else old for new, old in zip(changed, uids, strict=True)
            )
        target = self.root / uids[0] / uids[1] / f"{uids[2]}.dcm"
        make_folder(target.parent, self.folder_mode)
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        if dataset is None:
            try:
                os.link(inst.path, partial)
            except OSError as exc:
                if exc.errno not in (18, 1, 95):  # EXDEV, EPERM, EOPNOTSUPP: copy instead
                    raise
                shutil.copyfile(inst.path, partial)
                _fsync(partial)
        else:
            dataset.save_as(partial, enforce_file_format=True)
            _fsync(partial)
        os.chmod(partial, self.file_mode)
        os.replace(partial, target)
        return target


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
