"""The benchmark corpora, generated with pydicom and cached (a corpus is reused while its
manifest says it was written to the same specification).

- ``ct``: 1 study, 2 series x 500 CT images 512x512, 16 bit (~513 KiB each);
- ``small``: 2 studies x 10 series x 100 MR images 64x64, 16 bit (~9 KiB each);
- ``series5000``: one series of 5000 such small MR images (memory must stay flat);
- ``series50``: one series of 50 of them, the baseline the 5000 are compared with.

Files are Explicit VR Little Endian, uncompressed, named ``sSS/IIIII.dcm`` in sending order
(study by study, series by series), so that every peer sees series one after the other. A
spec with ``jpeg_lossless`` has its files compressed by DCMTK's dcmcjpeg (JPEG Lossless,
first-order prediction, 1.2.840.10008.1.2.4.70): the transcoding benchmark's input.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
FORMAT_VERSION = 1  # bump when the generated files change
DCMCJPEG = "/usr/bin/dcmcjpeg"


@dataclass(frozen=True)
class Spec:
    """What one corpus holds."""

    name: str
    studies: int
    series_per_study: int
    instances_per_series: int
    modality: str  # CT or MR
    size: int  # rows = columns
    jpeg_lossless: bool = False  # files compressed by dcmcjpeg (DCMTK) after writing

    @property
    def instances(self) -> int:
        return self.studies * self.series_per_study * self.instances_per_series

    def key(self) -> str:
        text = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


FULL = {
    "ct": Spec("ct", 1, 2, 500, "CT", 512),
    "small": Spec("small", 2, 10, 100, "MR", 64),
    "series5000": Spec("series5000", 1, 1, 5000, "MR", 64),
    "series50": Spec("series50", 1, 1, 50, "MR", 64),
}
SMOKE = {
    "ct": Spec("ct", 1, 2, 3, "CT", 512),
    "small": Spec("small", 2, 2, 3, "MR", 64),
    "series5000": Spec("series5000", 1, 1, 12, "MR", 64),
    "series50": Spec("series50", 1, 1, 4, "MR", 64),
}


@dataclass(frozen=True)
class Corpus:
    """A generated corpus on disk."""

    spec: Spec
    root: Path
    files: tuple[str, ...]  # relative to root, in sending order
    total_bytes: int
    series: int

    @property
    def count(self) -> int:
        return len(self.files)


def _uid(*parts: object) -> str:
    """A deterministic UID (2.25 + hash), so a regenerated corpus has the same UIDs."""
    return generate_uid(prefix=None, entropy_srcs=[str(p) for p in parts])


def _template(spec: Spec, study: int, series: int, study_uid: str, series_uid: str) -> Dataset:
    sop_class = CT_IMAGE_STORAGE if spec.modality == "CT" else MR_IMAGE_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"BENCH{study:04d}"
    ds.Modality = spec.modality
    ds.Manufacturer = "station bench"
    ds.StudyDescription = f"bench {spec.name} study {study}"
    ds.SeriesDescription = f"bench {spec.name} series {series}"
    ds.PatientName = f"Bench^{spec.name.capitalize()}{study}"
    ds.PatientID = f"BENCH-{spec.name}-{study}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(study)
    ds.SeriesNumber = series
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = _uid(spec.name, spec.key(), "frame", study)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.size
    ds.Columns = spec.size
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if spec.modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.KVP = 120
    rng = random.Random(f"{spec.key()}-{study}-{series}")
    ds.PixelData = rng.randbytes(2 * spec.size * spec.size)  # never decoded by anyone
    return ds


def _compress(path: Path) -> None:
    """Compress a file in place with dcmcjpeg (its default: lossless, selection value 1)."""
    packed = path.with_suffix(".jpeg")
    subprocess.run([DCMCJPEG, str(path), str(packed)], check=True, capture_output=True)
    packed.replace(path)


def generate(spec: Spec, cache: Path) -> Corpus:
    """The corpus of ``spec`` under ``cache``, written unless already there."""
    root = cache / f"{spec.name}-{spec.key()}"
    manifest = root / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        return Corpus(spec, root, tuple(data["files"]), data["total_bytes"], data["series"])
    if root.exists():
        shutil.rmtree(root)  # an interrupted generation
    root.mkdir(parents=True)
    files: list[str] = []
    total = 0
    series_index = 0
    for study in range(1, spec.studies + 1):
        study_uid = _uid(spec.name, spec.key(), "study", study)
        for _ in range(spec.series_per_study):
            series_index += 1
            series_uid = _uid(spec.name, spec.key(), "series", series_index)
            ds = _template(spec, study, series_index, study_uid, series_uid)
            folder = root / f"s{series_index:02d}"
            folder.mkdir()
            for number in range(1, spec.instances_per_series + 1):
                sop_uid = _uid(spec.name, spec.key(), "instance", series_index, number)
                ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                ds.SOPInstanceUID = sop_uid
                ds.InstanceNumber = number
                ds.SliceLocation = float(number)
                ds.ImagePositionPatient = [0, 0, float(number)]
                path = folder / f"{number:05d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                if spec.jpeg_lossless:
                    _compress(path)
                files.append(str(path.relative_to(root)))
                total += path.stat().st_size
    manifest.write_text(json.dumps({"files": files, "total_bytes": total, "series": series_index}))
    return Corpus(spec, root, tuple(files), total, series_index)
