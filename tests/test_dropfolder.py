"""Drop folders end to end: files and zip archives put into a watched folder reach a real DCMTK
storescp through `station run` (a subprocess).

storescp here keeps every copy it receives under a unique name (``+uf``), so a duplicate
delivery shows as a second file. Every wait polls a condition with a deadline; the only
pauses are those of the slow writer that the slow-copy test simulates.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    MALFORMED,
    VALID,
    StationProcess,
    StoreSCP,
    dicom_destination,
    needs_corpus,
    wait_for,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

pytestmark = pytest.mark.e2e

SETTLE = 0.3  # files in these tests are written in one go, or built elsewhere and moved in

# Instances of six series (several modalities and transfer syntaxes, distinct SOP Instance
# UIDs) in a nested layout: drop-folder path or zip member name -> file in VALID.
STUDY_LAYOUT = {
    "PAT1/CT/CT_small.dcm": "CT_small.dcm",
    "PAT1/MR/series 1/MR_small.dcm": "MR_small.dcm",
    "PAT2/NM/JPEG2000.dcm": "JPEG2000.dcm",
    "PAT2/NM/JPGExtended.dcm": "JPGExtended.dcm",
    "PAT3/RT/rtplan.dcm": "rtplan.dcm",
    "PAT3/SR/reportsi.dcm": "reportsi.dcm",
    "chrX1.dcm": "chrX1.dcm",
}


@pytest.fixture
def storescps(tmp_path: Path) -> Iterator[Callable[[str], StoreSCP]]:
    """Starts storescp instances that keep every copy (``+uf``); stops them at the end."""
    started: list[StoreSCP] = []

    def start(name: str) -> StoreSCP:
        scp = StoreSCP(tmp_path / name, extra=("+uf",)).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def pacs(storescps: Callable[[str], StoreSCP]) -> StoreSCP:
    """This module's destination: a storescp on which duplicates show (overrides conftest's)."""
    return storescps("pacs")


def watching(
    start_station: Callable[..., StationProcess],
    scp: StoreSCP,
    folder: Path,
    name: str = "station",
    **watch: object,
) -> StationProcess:
    """A station watching ``folder`` and delivering everything to ``scp``."""
    entry = {"path": str(folder), "settle_seconds": SETTLE, **watch}
    config = {"watch": [entry], "destinations": {"pacs": dicom_destination(scp)}}
    return start_station(config, name)


def quarantined(station: StationProcess) -> list[dict[str, object]]:
    """`station quarantine list --json`: the items held."""
    result = station.cli("quarantine", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def sent(station: StationProcess) -> float:
    return station.metric("station_dispatch_instances_total", destination="pacs", outcome="sent")


def taken(station: StationProcess) -> float:
    return station.metric("station_instances_received_total", source="folder", calling_ae="")


def files_in(folder: Path) -> list[Path]:
    """The files under ``folder`` (recursively), but not in its hidden subfolders."""
    if not folder.exists():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def copies(scp: StoreSCP) -> dict[str, list[Path]]:
    """SOP Instance UID -> every file storescp wrote for it (call once deliveries are done)."""
    found: dict[str, list[Path]] = {}
    for path in scp.files():
        found.setdefault(sop_uid(path), []).append(path)
    return found


def assert_delivered_once(scp: StoreSCP, sources: list[Path]) -> dict[str, Dataset]:
    """Exactly one copy of each source arrived, with the same data set; return them by UID."""
    arrived = copies(scp)
    by_uid = {sop_uid(p): p for p in sources}
    assert sorted(arrived) == sorted(by_uid)
    datasets = {}
    for uid, paths in arrived.items():
        assert len(paths) == 1, f"{uid} arrived {len(paths)} times"
        got, want = dcmread(paths[0]), dcmread(by_uid[uid])
        assert got == want, f"{by_uid[uid].name} arrived changed"
        assert got.file_meta.TransferSyntaxUID == want.file_meta.TransferSyntaxUID
        datasets[uid] = got
    return datasets


def place(folder: Path, layout: dict[str, str]) -> list[Path]:
    """Copy the VALID files of ``layout`` into ``folder``; return the sources."""
    for name, source in layout.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(VALID / source, target)
    return [VALID / source for source in layout.values()]


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def drop(path: Path, folder: Path) -> Path:
    """Move a finished file into the drop folder (as a copy tool's final rename does)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(path, folder / path.name))


def make_instances(folder: Path, count: int, series: int) -> dict[str, Path]:
    """``count`` copies of MR_small.dcm with new SOP Instance UIDs over ``series`` new series
    of one new study; returns SOP Instance UID -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(VALID / "MR_small.dcm")
    ds.StudyInstanceUID = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    made = {}
    for n in range(count):
        uid = generate_uid()
        ds.SeriesInstanceUID = series_uids[n % series]
        ds.SeriesNumber = n % series + 1
        ds.InstanceNumber = n // series + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        made[uid] = folder / f"IM{n:04d}.dcm"
        ds.save_as(made[uid])
    return made


@needs_corpus
@pytest.mark.filterwarnings("ignore:The value length .* exceeds:UserWarning")  # the source's
def test_slow_copy_arrives_once_and_whole(tmp_path, pacs, start_station):
    """A file written in chunks over ~1.5 s is taken only once complete (settle 3 s: the
    writer's pauses are a fifteenth of it, so a slow test machine cannot pass for a writer
    that has finished)."""
    dropbox = tmp_path / "dropbox"
    station = watching(start_station, pacs, dropbox, settle_seconds=3)
    source = VALID / "US_GREYSCALE_IMAGE.dcm"  # 790 kB, header readable from the first chunk
    data = source.read_bytes()
    target = dropbox / "slow.dcm"
    step = len(data) // 7 + 1
    with open(target, "wb") as out:
        for offset in range(0, len(data), step):
            if offset:
                time.sleep(0.2)  # the slow writer, pausing for less than settle_seconds
                assert target.exists(), "a partial file was taken from the drop folder"
            out.write(data[offset : offset + step])
            out.flush()
    assert not pacs.files(), "something was delivered before the file was complete"
    wait_for(lambda: not target.exists() and sent(station) >= 1, 20, message="the file taken")
    assert taken(station) == 1
    assert_delivered_once(pacs, [source])


@needs_corpus
def test_files_present_before_start_are_ingested(tmp_path, pacs, start_station):
    dropbox = tmp_path / "dropbox"
    sources = place(dropbox, STUDY_LAYOUT)
    station = watching(start_station, pacs, dropbox)
    wait_for(
        lambda: not files_in(dropbox) and sent(station) >= len(sources),
        30,
        message="the files that were there before the start delivered",
    )
    assert_delivered_once(pacs, sources)


@needs_corpus
def test_zip_with_nested_folders_routes_like_loose_files(tmp_path, storescps, start_station):
    loose_pacs, zip_pacs = storescps("pacs-loose"), storescps("pacs-zip")
    loose_box, zip_box = tmp_path / "dropbox-loose", tmp_path / "dropbox-zip"
    loose = watching(start_station, loose_pacs, loose_box, name="loose")
    zipped = watching(start_station, zip_pacs, zip_box, name="zipped")

    sources = place(tmp_path / "staging" / "loose", STUDY_LAYOUT)
    shutil.copytree(tmp_path / "staging" / "loose", loose_box, dirs_exist_ok=True)
    members = {f"export/{name}": (VALID / src).read_bytes() for name, src in STUDY_LAYOUT.items()}
    drop(write_zip(tmp_path / "staging" / "study.zip", members), zip_box)

    for station, box in ((loose, loose_box), (zipped, zip_box)):
        wait_for(
            lambda station=station, box=box: not files_in(box) and sent(station) >= len(sources),
            30,
            message=f"everything dropped into {box.name} delivered",
        )
    from_loose = assert_delivered_once(loose_pacs, sources)
    from_zip = assert_delivered_once(zip_pacs, sources)
    assert from_zip == from_loose
    series = {ds.SeriesInstanceUID for ds in from_zip.values()}
    assert len(series) == 6
    assert taken(zipped) == taken(loose) == len(sources)


@needs_corpus
def test_dicom_file_containing_a_zip_signature_is_taken_as_dicom(tmp_path, pacs, start_station):
    """Pixel data may hold the bytes of a zip end-of-central-directory record: such a file is
    still a DICOM file (it has 'DICM' after its preamble), not an empty or corrupt archive."""
    dropbox = tmp_path / "dropbox"
    station = watching(start_station, pacs, dropbox)
    ds = dcmread(VALID / "MR_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pixels = bytearray(ds.PixelData)
    record = b"PK\x05\x06" + bytes(18)  # an empty archive's end record, as 16-bit pixels
    pixels[-100 : -100 + len(record)] = record
    ds.PixelData = bytes(pixels)
    source = tmp_path / "staging" / "pixels.dcm"
    source.parent.mkdir()
    ds.save_as(source)
    assert zipfile.is_zipfile(source)  # what a zip test alone concludes

    original = tmp_path / "original.dcm"
    shutil.copyfile(source, original)
    drop(source, dropbox)
    wait_for(lambda: sent(station) >= 1, 20, message="the instance delivered")
    assert_delivered_once(pacs, [original])
    assert not files_in(station.workdir / "data" / "quarantine")


@needs_corpus
def test_bad_input_is_quarantined_with_a_reason(tmp_path, pacs, start_station):
    dropbox, staging = tmp_path / "dropbox", tmp_path / "staging"
    station = watching(start_station, pacs, dropbox)
    quarantine = station.workdir / "data" / "quarantine"
    ct, mr = (VALID / "CT_small.dcm").read_bytes(), (VALID / "MR_small.dcm").read_bytes()

    # One unsafe member refuses the whole archive: its safe member is not delivered either.
    evil = VALID / "chrRuss.dcm"
    slip = write_zip(staging / "slip.zip", {"ok/MR.dcm": mr, "../../evil.dcm": evil.read_bytes()})
    slip_bytes = slip.read_bytes()
    whole = write_zip(staging / "whole.zip", {"a/CT_small.dcm": ct, "a/MR_small.dcm": mr})
    (staging / "truncated.zip").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with zipfile.ZipFile(staging / "damaged.zip", "w") as archive:  # stored: bytes as given
        archive.writestr("CT_small.dcm", ct)
        start = archive.getinfo("CT_small.dcm").header_offset + 30 + len("CT_small.dcm")
    damaged = bytearray((staging / "damaged.zip").read_bytes())
    damaged[start + len(ct) - 10] ^= 0xFF  # pixel data changed: the CRC does not match
    (staging / "damaged.zip").write_bytes(damaged)
    with zipfile.ZipFile(staging / "encrypted.zip", "w") as archive:
        archive.writestr("CT_small.dcm", ct)
        info = archive.getinfo("CT_small.dcm")
        info.flag_bits |= 0x1  # "encrypted", in the central directory written on close
    encrypted = bytearray((staging / "encrypted.zip").read_bytes())
    encrypted[info.header_offset + 6] |= 0x1  # and in the local header
    (staging / "encrypted.zip").write_bytes(encrypted)
    # A good archive with one member that is not DICOM: the rest is delivered.
    write_zip(staging / "mixed.zip", {"study/CT_small.dcm": ct, "study/readme.txt": b"hello\n"})
    shutil.copyfile(MALFORMED / "derived_not_dicom_text.dcm", staging / "notes.dcm")
    names = ["slip.zip", "truncated.zip", "damaged.zip", "encrypted.zip", "mixed.zip"]
    for name in [*names, "notes.dcm"]:
        drop(staging / name, dropbox)

    expected = {  # source (in the drop folder) -> kind, reason, words of the detail
        "slip.zip": ("zip", "unsafe_zip", ["'../../evil.dcm'", "points outside the archive"]),
        "truncated.zip": ("zip", "corrupt_zip", ["corrupt zip archive"]),
        "damaged.zip": ("zip", "corrupt_zip", ["corrupt zip archive", "CRC"]),
        "encrypted.zip": ("zip", "unsafe_zip", ["'CT_small.dcm'", "encrypted"]),
        "mixed.zip:study/readme.txt": ("member", "not_dicom", ["mixed.zip", "not a DICOM file"]),
        "notes.dcm": ("file", "not_dicom", ["notes.dcm", "not a DICOM file"]),
    }
    items = wait_for(
        lambda: not files_in(dropbox) and len(held := quarantined(station)) >= 6 and held,
        30,
        message="every bad input in quarantine",
    )
    by_source = {item["source"].removeprefix(f"{dropbox}/"): item for item in items}
    assert sorted(by_source) == sorted(expected)
    for source, (kind, reason, words) in expected.items():
        item = by_source[source]
        assert (item["kind"], item["reason"]) == (kind, reason), item
        for word in words:
            assert word in item["detail"], f"{source}: {word!r} not in {item['detail']!r}"
        assert Path(item["path"]).is_relative_to(quarantine)
    assert Path(by_source["slip.zip"]["path"]).read_bytes() == slip_bytes  # kept whole
    assert Path(by_source["mixed.zip:study/readme.txt"]["path"]).read_bytes() == b"hello\n"
    assert len(files_in(quarantine)) == 6
    assert station.metric("station_quarantined_inputs_total", reason="corrupt_zip") == 2
    wait_for(
        lambda: station.metric("station_quarantine_items", kind="zip") == 4,
        10,
        message="the quarantine gauge",
    )
    # Nothing was written outside: no evil.dcm anywhere, no temporary files left behind.
    assert not list(tmp_path.rglob("evil.dcm")) and not (tmp_path.parent / "evil.dcm").exists()
    assert [dcmread(p).SOPInstanceUID for p in station.spooled()] == [
        dcmread(VALID / "CT_small.dcm").SOPInstanceUID  # from mixed.zip
    ]

    # The service keeps going: a valid file dropped afterwards is delivered.
    shutil.copyfile(VALID / "chrX1.dcm", staging / "after.dcm")
    drop(staging / "after.dcm", dropbox)
    wait_for(lambda: sent(station) >= 2, 20, message="the file dropped afterwards delivered")
    assert station.proc is not None and station.proc.poll() is None
    assert_delivered_once(pacs, [VALID / "CT_small.dcm", VALID / "chrX1.dcm"])
    assert sop_uid(evil) not in copies(pacs)


@needs_corpus
def test_after_move_puts_the_file_into_the_done_folder(tmp_path, pacs, start_station):
    dropbox = tmp_path / "dropbox"
    station = watching(start_station, pacs, dropbox, after="move")
    sources = place(dropbox, {"sub/a.dcm": "CT_small.dcm", "b.dcm": "MR_small.dcm"})
    done = dropbox / ".station-done"
    wait_for(
        lambda: (done / "sub" / "a.dcm").exists() and (done / "b.dcm").exists(),
        20,
        message="the files moved into .station-done",
    )
    assert not files_in(dropbox)
    assert (done / "sub" / "a.dcm").read_bytes() == sources[0].read_bytes()
    assert (done / "b.dcm").read_bytes() == sources[1].read_bytes()
    # The done folder is not ingested: a file dropped later is the only one taken after them.
    sources += place(dropbox, {"c.dcm": "chrX1.dcm"})
    wait_for(lambda: (done / "c.dcm").exists() and sent(station) >= 3, 20, message="c.dcm done")
    assert taken(station) == 3
    assert_delivered_once(pacs, sources)


@needs_corpus
def test_after_keep_leaves_the_file_and_never_takes_it_twice(tmp_path, pacs, start_station):
    dropbox = tmp_path / "dropbox"
    station = watching(start_station, pacs, dropbox, after="keep", rescan_seconds=0.2)
    sources = place(dropbox, {"a.dcm": "CT_small.dcm"})
    wait_for(lambda: sent(station) >= 1, 20, message="a.dcm delivered")
    assert (dropbox / "a.dcm").read_bytes() == sources[0].read_bytes()

    # While b.dcm settles and is delivered, rescans every 0.2 s see a.dcm again and again.
    sources += place(dropbox, {"b.dcm": "MR_small.dcm"})
    wait_for(lambda: sent(station) >= 2, 20, message="b.dcm delivered")
    assert taken(station) == 2

    # After a restart both are seen again; a third file is the only one taken.
    station.restart()
    sources += place(dropbox, {"c.dcm": "chrX1.dcm"})
    wait_for(lambda: sent(station) >= 1, 20, message="c.dcm delivered after the restart")
    assert taken(station) == 1
    assert sorted(p.name for p in files_in(dropbox)) == ["a.dcm", "b.dcm", "c.dcm"]
    assert_delivered_once(pacs, sources)


@needs_corpus
def test_kill_during_ingest_then_restart_delivers_every_file(tmp_path, pacs, start_station):
    dropbox = tmp_path / "dropbox"
    made = make_instances(tmp_path / "staging", 500, series=3)
    station = watching(start_station, pacs, dropbox)
    dropbox.mkdir(exist_ok=True)
    for path in made.values():
        shutil.copyfile(path, dropbox / path.name)

    def remaining() -> int:
        return len(list(dropbox.iterdir()))

    wait_for(lambda: remaining() < 480, 30, interval=0.005, message="the ingest under way")
    assert station.stop(signal.SIGKILL) == -signal.SIGKILL
    left = remaining()
    assert 0 < left < 500, f"{left} files left: the kill did not interrupt the ingest"

    station.restart()
    arrived: dict[Path, str] = {}

    def delivered() -> set[str]:
        for path in pacs.files():
            if path not in arrived:
                try:
                    arrived[path] = sop_uid(path)
                except Exception:
                    continue  # still being written: read it on the next pass
        return set(arrived.values())

    wait_for(
        lambda: not files_in(dropbox) and delivered() >= set(made),
        60,
        interval=0.2,
        message="all 500 instances delivered after the restart",
    )
    assert delivered() == set(made)  # duplicates are allowed (at least once), others are not
    assert not files_in(station.workdir / "data" / "quarantine")


@needs_corpus
def test_dicomdir_is_not_forwarded_as_an_image(tmp_path, pacs, start_station):
    dropbox, staging = tmp_path / "dropbox", tmp_path / "staging"
    station = watching(start_station, pacs, dropbox)
    dicomdir = (VALID / "DICOMDIR-empty.dcm").read_bytes()
    members = {"CD/DICOMDIR": dicomdir, "CD/DICOM/IM0001": (VALID / "MR_small.dcm").read_bytes()}
    drop(write_zip(staging / "cd.zip", members), dropbox)
    sources = place(dropbox, {"DICOMDIR": "DICOMDIR-empty.dcm", "IM0002": "CT_small.dcm"})
    wait_for(
        lambda: not files_in(dropbox) and sent(station) >= 2, 20, message="the images delivered"
    )
    assert taken(station) == 2
    assert_delivered_once(pacs, [VALID / "MR_small.dcm", sources[1]])
    assert not files_in(station.workdir / "data" / "quarantine")
    assert "skipped: DICOMDIR" in station.run_log()


def halves_at_pixel_data(source: Path) -> tuple[bytes, bytes]:
    """A file split at an element boundary: all but its Pixel Data element, and that."""
    raw = dcmread(source, defer_size=1).get_item(0x7FE00010, keep_deferred=True)
    cut = raw.value_tell - (8 if raw.is_implicit_VR else 12)
    data = source.read_bytes()
    return data[:cut], data[cut:]


@pytest.mark.parametrize("closes_between", [False, True], ids=["held-open", "closed-between"])
def test_writer_pausing_before_pixel_data_is_waited_for(
    tmp_path, pacs, start_station, closes_between
):
    """A writer that writes everything up to Pixel Data, pauses for longer than
    settle_seconds (with the file open, or closed and reopened to append), then writes the
    rest: the whole instance is delivered once, pixel data included, and nothing before."""
    dropbox = tmp_path / "dropbox"
    station = watching(start_station, pacs, dropbox)
    source = VALID / "CT_small.dcm"
    first, rest = halves_at_pixel_data(source)
    target = dropbox / "paused.dcm"

    def pause() -> None:
        """Several settle periods and rescans go by; the first half must stay there."""
        paused = time.monotonic()
        wait_for(lambda: time.monotonic() - paused > 6 * SETTLE, 5, message="the pause")
        assert target.exists(), "the first half was taken from the drop folder"
        assert not station.spooled() and not pacs.files()

    with open(target, "wb") as out:
        out.write(first)
        out.flush()
        if not closes_between:
            pause()
            out.write(rest)
    if closes_between:
        pause()
        with open(target, "ab") as out:
            out.write(rest)
    wait_for(lambda: not target.exists() and sent(station) >= 1, 20, message="the file taken")
    delivered = assert_delivered_once(pacs, [source])
    assert "PixelData" in next(iter(delivered.values()))
    assert not quarantined(station)


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_writer_conventions_partial_names_and_ready_marker(
    tmp_path, storescps, start_station, polling
):
    """For writers on network shares (polling: no close events): a file named `*.partial`
    is never taken, and with `ready_marker` files wait for the marker in their folder or
    one above; a marker is removed once everything under it is taken."""
    pacs = storescps("pacs")
    dropbox = tmp_path / "dropbox"
    station = watching(
        start_station, pacs, dropbox, ready_marker="READY", polling=polling, rescan_seconds=1
    )
    partial = dropbox / "CT_small.dcm.partial"
    shutil.copyfile(VALID / "CT_small.dcm", partial)
    study = dropbox / "study"
    study.mkdir()
    shutil.copyfile(VALID / "MR_small.dcm", study / "MR_small.dcm")

    def nothing_taken_for_a_while() -> None:
        paused = time.monotonic()
        wait_for(lambda: time.monotonic() - paused > 8 * SETTLE, 5, message="several settles")
        assert sent(station) == 0 and not pacs.files()

    nothing_taken_for_a_while()
    partial.rename(dropbox / "CT_small.dcm")  # the writer is done, but no marker yet
    nothing_taken_for_a_while()
    (study / "READY").touch()
    wait_for(lambda: sent(station) >= 1, 20, message="the marked folder taken")
    wait_for(lambda: not (study / "READY").exists(), 10, message="its marker removed")
    assert (dropbox / "CT_small.dcm").exists(), "taken without a marker above it"
    (dropbox / "READY").touch()
    wait_for(lambda: sent(station) >= 2, 20, message="the top folder taken")
    assert_delivered_once(pacs, [VALID / "CT_small.dcm", VALID / "MR_small.dcm"])
