"""Transfer syntax conversion on the way out: which syntaxes an instance may be sent in to a
destination, and the conversion itself, one instance at a time, by pydicom's pixel data
codecs (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls).

What is lossless. The syntaxes in LOSSLESS decode to exactly the samples that were
encoded. Converting into a lossless syntax never loses more than the source already lost,
whatever the source: decompressing a JPEG Baseline image writes out the very samples any
viewer decodes from it (Lossy Image Compression stays or becomes "01"). Encoding into a
lossy syntax loses information and happens only for a destination with ``allow_lossy``
(the result gets a SOP Instance UID of its own, derived from the original so that a retry
sends the same one). An instance stored in a lossy syntax is sent in it, as it is, without
that permission: that loses nothing either.

Every lossless compression is decoded again and compared before it is sent. Colour: the
samples are kept as decoded, in their photometric interpretation, except
YBR_FULL_422, which decoders upsample: that becomes RGB (as DCMTK's dcmdjpeg does).
Explicit VR Big Endian (retired) is read and converted to little endian, never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pydicom.uid import JPEGLossless as JPEGLosslessP14

from station.dicom.uids import DEFAULT_PREFERENCES, STORED, uid_name

# Written by pydicom's data set writer, no pixel codec needed.
NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
LOSSLESS = frozenset(
    {
        *NATIVE,
        ExplicitVRBigEndian,
        JPEGLosslessP14,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        RLELossless,
        "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
        "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
        "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL (Lossless Only)
    }
)
# How lossy encoding is done, for destinations with allow_lossy: JPEG-LS with an error of
# at most 2 per sample; JPEG 2000 at a compression ratio of 10.
LOSSY_OPTIONS: dict[str, dict[str, Any]] = {
    JPEGLSNearLossless: {"jls_error": 2},
    JPEG2000: {"j2k_cr": [10]},
}
# Bytes per value of the binary VRs whose byte order follows the transfer syntax.
_WORD = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
PIXEL_DATA = 0x7FE00010


class TranscodeError(ValueError):
    """An instance cannot be converted to a transfer syntax; the message says why."""


def is_lossy(syntax: str) -> bool:
    return syntax not in LOSSLESS


def decodable(syntax: str) -> bool:
    """Whether the installed codecs can decode pixel data in ``syntax``."""
    if syntax in NATIVE or syntax == ExplicitVRBigEndian:
        return True
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def encodable(syntax: str) -> bool:
    """Whether the station can write a data set in ``syntax``."""
    if syntax in NATIVE:
        return True
    try:
        return bool(get_encoder(syntax).is_available)
    except NotImplementedError:
        return False


@dataclass(frozen=True)
class SyntaxPolicy:
    """A destination's transfer syntax preferences (``STORED`` for the syntax each instance
    came in) and whether it may receive lossy re-compression."""

    preferences: tuple[str, ...] = DEFAULT_PREFERENCES
    allow_lossy: bool = False

    def refusal(self, stored: str, target: str) -> str | None:
        """Why an instance stored in ``stored`` cannot be sent in ``target``; None if it can."""
        if target == stored:
            return None
        if not decodable(stored):
            return f"the station has no decoder for {uid_name(stored)}"
        if not encodable(target):
            return f"the station cannot encode {uid_name(target)}"
        if is_lossy(target) and not self.allow_lossy:
            return (
                f"{uid_name(target)} is lossy: converting into it needs allow_lossy: true "
                "on the destination"
            )
        return None

    def syntaxes(self, stored: str) -> list[str]:
        """The syntaxes an instance stored in ``stored`` may be sent in, most preferred first."""
        result: list[str] = []
        for preference in self.preferences:
            syntax = stored if preference == STORED else preference
            if syntax not in result and self.refusal(stored, syntax) is None:
                result.append(syntax)
        return result

    def excluded(self, stored: str) -> list[str]:
        """Why each preference other than ``stored`` is out of reach for such an instance."""
        return [
            why
            for syntax in self.preferences
            if syntax != STORED and (why := self.refusal(stored, syntax)) is not None
        ]


def _little_endian(ds: Dataset) -> None:
    """Swap the bytes of every binary value read from Explicit VR Big Endian (numbers and
    text pydicom re-encodes itself)."""

    def swap(dataset: Dataset, elem: DataElement) -> None:
        width = _WORD.get(str(elem.VR), 1)
        if elem.tag == PIXEL_DATA:
            bits = int(dataset.get("BitsAllocated", 16))
            width = bits // 8 if bits > 16 else width
        if width > 1 and isinstance(elem.value, bytes):
            words = np.frombuffer(elem.value, dtype=f">u{width}")
            elem.value = words.astype(f"<u{width}").tobytes()

    ds.walk(swap)


def even_lengths(ds: Dataset) -> Dataset:
    """Pad binary values of odd length (PS3.5 7.1.1: every value is of even length) with a
    NUL, as pydicom pads text but writes bytes as they are: DCMTK's storescp aborts the
    association on an odd-length OB element."""

    def pad(_dataset: Dataset, elem: DataElement) -> None:
        if isinstance(elem.value, bytes) and len(elem.value) % 2:
            elem.value += b"\0"

    ds.walk(pad)
    return ds


def _compress(ds: Dataset, target: str) -> None:
    """Encode native pixel data into ``target``. A lossless result is decoded again and
    compared: pydicom 3.0's encoders get some layouts wrong (colour planes stored one after
    the other, PlanarConfiguration 1, come back scrambled from JPEG 2000), and such output
    must never be sent."""
    pixels = ds.pixel_array
    ds.compress(target, generate_instance_uid=False, **LOSSY_OPTIONS.get(target, {}))
    if not is_lossy(target) and not np.array_equal(ds.pixel_array, pixels):
        raise TranscodeError(
            f"encoding into {uid_name(target)} does not give back the same pixels "
            f"(PhotometricInterpretation {ds.get('PhotometricInterpretation')}, "
            f"PlanarConfiguration {ds.get('PlanarConfiguration')}): not sent in it"
        )


def convert(ds: Dataset, source: str, target: str, policy: SyntaxPolicy) -> Dataset:
    """Convert ``ds``, read (and maybe transformed) from an instance stored in ``source``,
    in place so that it can be encoded in ``target``; raise TranscodeError saying why not."""
    refusal = policy.refusal(source, target)
    if refusal is not None:
        raise TranscodeError(refusal)
    if target == source:
        return ds
    ds.file_meta.TransferSyntaxUID = UID(source)
    try:
        if source == ExplicitVRBigEndian:
            _little_endian(ds)
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if PIXEL_DATA in ds:
            if UID(source).is_compressed:
                as_rgb = ds.get("PhotometricInterpretation") == "YBR_FULL_422"
                ds.decompress(as_rgb=as_rgb, generate_instance_uid=False)
            if UID(target).is_compressed:
                _compress(ds, target)
    except TranscodeError:
        raise
    except Exception as exc:  # each codec plugin raises its own types on data it refuses
        raise TranscodeError(
            f"cannot convert from {uid_name(source)} to {uid_name(target)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if PIXEL_DATA in ds and (is_lossy(source) or is_lossy(target)):
        ds.LossyImageCompression = "01"
    if is_lossy(target):
        uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), target])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = UID(target)
    return ds


def describe_plan(stored: str, policy: SyntaxPolicy) -> str:
    """In words, what sending an instance stored in ``stored`` to a destination with this
    policy does. Before associating, what the peer accepts is unknown: this says what
    would happen in each case."""
    syntaxes = policy.syntaxes(stored)
    if not syntaxes:
        why = "; ".join(policy.excluded(stored))
        return f"stored {uid_name(stored)}: no syntax to send it in ({why})"
    if syntaxes == [stored]:
        return f"stored {uid_name(stored)}: sent as stored, never converted"
    if syntaxes[0] == stored:
        others = " or ".join(uid_name(ts) for ts in syntaxes[1:])
        return (
            f"stored {uid_name(stored)}: sent as stored; would convert to {others} "
            "if the peer refuses it"
        )
    steps = ", ".join(
        f"{uid_name(ts)} ({'as stored' if ts == stored else 'converted'})" for ts in syntaxes
    )
    return f"stored {uid_name(stored)}: sent in the first of these the peer accepts: {steps}"
