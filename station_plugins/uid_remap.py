"""``uid-remap``: new Study, Series, SOP Instance and Frame of Reference UIDs under your root.

A transform. Every UID that identifies something of this patient -- study, series,
instance, frame of reference, and every other element that the DICOM Basic Application
Level Confidentiality Profile (PS3.15 Table E.1-1) replaces with a new UID ("U"), nested
sequences included (ReferencedSOPInstanceUID, ReferencedFrameOfReferenceUID, ...), and the
file meta MediaStorageSOPInstanceUID -- becomes ``<org_root>.<digits>``, the digits taken
from HMAC-SHA256(salt, original UID). The mapping keeps no state: one original UID gets the
same new UID in every series, every destination copy and after a restart, so references
between series (a structure set to its CT, a segmentation to its source images) stay
intact. SOP Class, Transfer Syntax and coding scheme UIDs are kept. Pixel data is never
decoded.

Options, in a route file (``plugin_options.uid-remap`` in the config gives defaults for
every route, e.g. the one ``org_root`` of your organisation):

``org_root`` (required)
    your organisation's UID root, e.g. ``"1.3.6.1.4.1.45037"``; at most 32 characters so
    that every new UID keeps at least 30 digits of hash and fits DICOM's 64 characters.
``salt`` (default ``""``)
    a project secret. Different salts give unrelated UIDs, so one study sent to two
    projects cannot be linked by its UIDs; without a salt, anyone who knows an original UID
    and this algorithm can compute its new one.

Example::

    # station.yaml
    plugin_options:
      uid-remap: {org_root: "1.3.6.1.4.1.45037"}

    # routes/research.yaml
    name: research
    transform:
      - uid-remap: {salt: "luad-2024-secret"}
    destinations: [research-pacs]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from station import hookimpl

if TYPE_CHECKING:
    from station.series import SeriesView

# The edition of PS3.15 Table E.1-1 (as transcribed by dicom-anonymizer) both this plugin
# and ``anonymize`` follow.
PROFILE_EDITION = "dicomfields_2026c"
MAX_ROOT_LENGTH = 32
_ROOT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
_defaults: dict[str, Any] = {}


@dataclass(frozen=True)
class Settings:
    org_root: str
    salt: str


@cache
def uid_tags() -> frozenset[int]:
    """The tags that the Basic Profile replaces with a new UID (action U)."""
    return frozenset(
        Tag(tag) for tag in dicom_anonymization_database_selector(PROFILE_EDITION)["U_TAGS"]
    )


def new_uid(uid: str, root: str, salt: str = "") -> str:
    """The UID that ``uid`` becomes under ``root``: the same for the same inputs, always.

    128 bits of HMAC-SHA256 as a decimal number (as in a ``2.25`` UUID-derived UID), cut to
    the digits that fit in 64 characters after ``root``.
    """
    digest = hmac.new(salt.encode(), uid.strip("\0 ").encode(), hashlib.sha256).digest()
    digits = min(39, 63 - len(root))
    return f"{root}.{int.from_bytes(digest[:16], 'big') % 10**digits}"


def check_root(root: Any, key: str) -> str:
    """``root`` as a UID root that leaves room for the hash digits; ValueError otherwise."""
    if not isinstance(root, str) or not _ROOT.fullmatch(root):
        raise ValueError(f"{key}: expected a UID root such as '1.3.6.1.4.1.45037', got {root!r}")
    if len(root) > MAX_ROOT_LENGTH:
        raise ValueError(f"{key}: {root!r} is longer than {MAX_ROOT_LENGTH} characters")
    return root


def element_vr(dataset: Dataset, tag: BaseTag) -> str:
    """The VR of an element without decoding its value (which, for a structure set's
    contours or a waveform, costs far more than anything a transform does)."""
    vr = dataset.get_item(tag).VR
    if vr is not None:
        return vr
    try:  # implicit VR: the dictionary's
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def remap_uids(dataset: Dataset, root: str, salt: str) -> None:
    """Replace every U-action UID of ``dataset`` (sequences and file meta included)."""
    tags = uid_tags()
    for tag in list(dataset.keys()):  # iterating the Dataset itself would decode every value
        vr = element_vr(dataset, tag)
        if vr == "SQ":
            for item in dataset[tag].value:
                remap_uids(item, root, salt)
        elif tag in tags and vr == "UI" and dataset[tag].value:
            element = dataset[tag]
            if element.VM > 1:
                element.value = [new_uid(str(v), root, salt) for v in element.value]
            else:
                element.value = new_uid(str(element.value), root, salt)
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        remap_uids(file_meta, root, salt)


def _check(options: Mapping[str, Any]) -> None:
    """Check the options given (a route's, or the defaults); ValueError names the problem."""
    unknown = set(options) - {"org_root", "salt"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected org_root and salt")
    if not isinstance(options.get("salt", ""), str):
        raise ValueError(f"salt: expected a string, got {options['salt']!r}")
    if "org_root" in options:
        check_root(options["org_root"], "org_root")


@lru_cache(maxsize=64)
def _settings(key: str) -> Settings:
    options = json.loads(key)
    _check(options)
    if "org_root" not in options:
        raise ValueError(
            "org_root is required: your organisation's UID root, e.g. '1.3.6.1.4.1.45037' "
            "(in the route's options or in plugin_options.uid-remap)"
        )
    return Settings(options["org_root"], options.get("salt", ""))


def uid_remap(dataset: Dataset, series: SeriesView, options: dict[str, Any]) -> None:
    """The ``uid-remap`` transform: new UIDs under ``org_root``, references kept."""
    settings = _settings(json.dumps({**_defaults, **options}, sort_keys=True, default=str))
    remap_uids(dataset, settings.org_root, settings.salt)


@hookimpl
def station_configure(options: dict[str, Any]) -> None:
    _check(options)
    _defaults.clear()
    _defaults.update(options)


@hookimpl
def station_transforms() -> dict[str, Any]:
    return {"uid-remap": uid_remap}
