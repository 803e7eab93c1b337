"""station.receive.inputs: the one set of rules `run`, `send` and `preview` read inputs by."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from conftest import VALID

from station.receive.inputs import ZipLimits, input_files


def read(paths: list[Path], scratch: Path, limits: ZipLimits | None = None):
    problems: list[str] = []
    scratch.mkdir(exist_ok=True)
    names = [item.name for item in input_files(paths, scratch, problems, limits)]
    return names, problems


def test_a_zip_with_a_parent_member_is_refused_whole(tmp_path):
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok/CT.dcm", (VALID / "CT_small.dcm").read_bytes())
        z.writestr("../evil.dcm", b"x")
    names, problems = read([archive], tmp_path / "scratch")
    assert names == []
    assert len(problems) == 1 and "'../evil.dcm' points outside the archive" in problems[0]


def test_ratio_and_count_limits_refuse_the_archive(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.dcm", bytes(8 << 20))
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for n in range(5):
            z.writestr(f"{n}.dcm", b"x")
    names, problems = read([bomb, many], tmp_path / "scratch", ZipLimits(max_files=4))
    assert names == []
    assert "zip_max_ratio" in problems[0] and "has 5 files" in problems[1]


def test_links_and_fifos_in_a_folder_are_refused_not_followed(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes((VALID / "CT_small.dcm").read_bytes())
    (folder / "link.dcm").symlink_to(VALID / "MR_small.dcm")
    (folder / "dir-link").symlink_to(VALID)
    os.mkfifo(folder / "pipe.dcm")
    names, problems = read([folder], tmp_path / "scratch")
    assert names == [str(folder / "ct.dcm")]
    assert sorted(p.split(":")[0].rsplit("/", 1)[1] for p in problems) == [
        "dir-link",
        "link.dcm",
        "pipe.dcm",
    ]
    assert sum("not followed" in p for p in problems) == 2
    assert any("FIFO" in p for p in problems)
