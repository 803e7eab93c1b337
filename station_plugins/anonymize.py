"""``anonymize``: the DICOM Basic Application Level Confidentiality Profile, per instance.

A transform. It applies the action table of DICOM PS3.15 Table E.1-1 (the 2026c edition,
as transcribed by the maintained ``dicom-anonymizer`` package) to every element of the data
set, in sequences at any depth:

- **X** (remove): deleted, e.g. PatientAddress, InstitutionName, OtherPatientIDs;
  curves, overlays and overlay comments too.
- **Z** (empty): zero length, e.g. PatientBirthDate, AccessionNumber, StudyDate; a sequence
  loses its items.
- **D** (dummy value): ``ANONYMIZED``, ``19000101``, ``0``, ...; a sequence (an SR's
  ContentSequence, a GraphicAnnotationSequence) keeps its items: the table applies in them,
  and free text the table does not list (LT, ST, UT, UC, PN values such as an SR's
  TextValue) is replaced by a dummy too, so codes and structure stay valid.
- **U** (new UID): StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, FrameOfReferenceUID,
  ReferencedSOPInstanceUID, ... and the file meta MediaStorageSOPInstanceUID become
  ``<uid_root>.<HMAC-SHA256(salt, UID)>``, the same mapping as ``uid-remap``: stable across
  series, copies and restarts, so references between series stay intact.
- Where the table leaves the choice to the IOD (Z/D, X/Z, X/D, X/Z/D), the value is kept
  valid for any type: D, Z, D, D.
- Every private element is removed (private creators included).
- Elements the table does not list are kept (e.g. Modality, ImageType, BodyPartExamined,
  pixel module attributes). Pixel data is never decoded nor changed: the profile's "no
  burned-in identification" is not checked -- drop such series with the ``tag-filter``
  plugin (``BurnedInAnnotation: "YES"``) or review them.

PatientID becomes the project's ID for this patient (see ``patient_ids``), PatientName the
same value. PatientIdentityRemoved is set to ``YES``; DeidentificationMethod and
DeidentificationMethodCodeSequence (CID 7050) name the profile and the options in force;
LongitudinalTemporalInformationModified says whether dates were shifted (``MODIFIED``) or
removed (``REMOVED``).

Options, in a route file (``plugin_options.anonymize`` in the config gives defaults for
every route -- the place for the salt, which ``STATION_PLUGIN_OPTIONS__ANONYMIZE__SALT`` can
then set from the environment):

``salt`` (required)
    a project secret; keyed hashes of it make the pseudonyms, the new UIDs and the
    per-patient date shifts. Keep it secret and keep it: another salt gives other IDs.
``patient_ids`` (default none)
    the project's ID for each original PatientID: a mapping ``{ORIGINAL: NEW}``, or the
    path of a CSV file with rows ``ORIGINAL,NEW`` (a header row does no harm; the file is
    re-read when it changes). An unmapped patient gets a pseudonym: 16 hex digits of
    HMAC-SHA256(salt, PatientID), the same every time.
``unmapped_ids`` (default ``pseudonym``)
    ``pseudonym``, or ``refuse``: an instance of a patient missing from ``patient_ids``
    fails (its copy goes to the dead letter with the reason) instead of being sent.
``date_shift_days`` (default none: dates are emptied or removed as the table says)
    keep dates, shifted: a whole number of days (e.g. ``-365``), or ``per-patient`` for a
    shift of 1 to 365 days back derived from salt and PatientID (the same for every study
    of one patient, so intervals between studies are kept). Every DA and DT value is
    shifted, in sequences too (times are kept); PatientBirthDate is still emptied. A value
    that is not a valid date is emptied.
``keep_descriptions`` (default ``false``)
    ``true`` keeps the elements whose keyword ends in ``Description`` (StudyDescription,
    SeriesDescription, PerformedProcedureStepDescription, ...) and ProtocolName. They are
    free text: check a sample for names before you rely on this.
``uid_root`` (default ``2.25``: UUID-derived UIDs)
    the root of the new UIDs, e.g. your organisation's ``1.3.6.1.4.1.45037``.
``profile`` (default ``basic``)
    only ``basic`` for now.

Example::

    # station.yaml
    plugin_options:
      anonymize: {salt: "change me, keep me secret"}

    # routes/research.yaml
    name: chest-ct-to-research
    match: {Modality: CT}
    transform:
      - anonymize:
          patient_ids: /etc/station/luad-ids.csv
          unmapped_ids: refuse
          date_shift_days: per-patient
          keep_descriptions: true
      - uid-remap: {org_root: "1.3.6.1.4.1.45037"}
      - private-tags: {project: TCGA-LUAD, site: "77779002"}
    destinations: [research-pacs]
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from station import hookimpl
from station_plugins.uid_remap import PROFILE_EDITION, check_root, element_vr, remap_uids

if TYPE_CHECKING:
    from station.series import SeriesView

# The table's categories, and what this plugin does for each (see the docstring).
ACTIONS = {
    "X_TAGS": "X",
    "Z_TAGS": "Z",
    "X_Z_TAGS": "Z",
    "D_TAGS": "D",
    "Z_D_TAGS": "D",
    "X_D_TAGS": "D",
    "X_Z_D_TAGS": "D",
    "U_TAGS": "U",
    "X_Z_U_STAR_TAGS": "U",  # sequences of references: kept, their UIDs replaced
}
DUMMY_TEXT = "ANONYMIZED"
DUMMY = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "UR": "https://anonymized.invalid",
}
NUMBERS = ("DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD")
BINARY = ("OB", "OW", "OD", "OF", "OL", "OV", "UN")
FREE_TEXT = ("LT", "ST", "UT", "UC", "PN")
PATIENT_ID = Tag("PatientID")
PATIENT_NAME = Tag("PatientName")
BIRTH_DATE = Tag("PatientBirthDate")
MAX_PER_PATIENT_SHIFT = 365
OPTIONS = (
    "salt",
    "patient_ids",
    "unmapped_ids",
    "date_shift_days",
    "keep_descriptions",
    "uid_root",
    "profile",
)
_defaults: dict[str, Any] = {}


@dataclass(frozen=True)
class Profile:
    exact: dict[int, str]
    masked: tuple[tuple[int, int, int, int, str], ...]  # group, element, masks, action
    descriptions: frozenset[int]

    def action(self, tag: BaseTag) -> str | None:
        found = self.exact.get(tag)
        if found is not None:
            return found
        for group, element, group_mask, element_mask, action in self.masked:
            if tag.group & group_mask == group and tag.element & element_mask == element:
                return action
        return None


@cache
def profile() -> Profile:
    """PS3.15 Table E.1-1, as tag -> X, Z, D or U (repeating groups as masks)."""
    table = dicom_anonymization_database_selector(PROFILE_EDITION)
    exact: dict[int, str] = {}
    masked = []
    for category, action in ACTIONS.items():
        for entry in table[category]:
            if len(entry) == 2:
                exact[Tag(entry)] = action
            else:
                group, element, group_mask, element_mask = entry
                masked.append((group & group_mask, element & element_mask, *entry[2:], action))
    descriptions = frozenset(
        tag
        for tag in exact
        if (keyword_for_tag(tag) or "").endswith("Description") or tag == Tag("ProtocolName")
    )
    return Profile(exact, tuple(masked), descriptions)


@dataclass(frozen=True)
class Settings:
    salt: str
    patient_ids: Mapping[str, str] | Path | None
    refuse_unmapped: bool
    date_shift_days: int | None  # None: no shift
    per_patient_shift: bool
    keep_descriptions: bool
    uid_root: str


def _keyed(salt: str, purpose: str, value: str) -> bytes:
    return hmac.new(salt.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).digest()


@lru_cache(maxsize=16)
def _read_ids(path: Path, _mtime_ns: int) -> dict[str, str]:
    """The ``ORIGINAL,NEW`` rows of a CSV file (cached until the file changes)."""
    ids = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.reader(fh), 1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) < 2 or not cells[0] or not cells[1]:
                raise ValueError(f"patient_ids: {path}:{number}: expected ORIGINAL,NEW")
            ids[cells[0]] = cells[1]
    return ids


def _check(options: Mapping[str, Any]) -> None:
    """Check the options given (a route's, or the defaults); ValueError names the problem."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected {', '.join(OPTIONS)}")
    if options.get("profile", "basic") != "basic":
        raise ValueError(f"profile: only 'basic' is provided, not {options['profile']!r}")
    if not isinstance(options.get("salt", ""), str):
        raise ValueError("salt: expected a string")
    ids = options.get("patient_ids")
    if ids is not None and not isinstance(ids, dict | str):
        raise ValueError("patient_ids: expected a mapping {ORIGINAL: NEW} or a CSV file path")
    if options.get("unmapped_ids", "pseudonym") not in ("pseudonym", "refuse"):
        raise ValueError("unmapped_ids: expected 'pseudonym' or 'refuse'")
    shift = options.get("date_shift_days")
    if not (shift is None or shift == "per-patient" or type(shift) is int):
        raise ValueError(
            f"date_shift_days: expected a whole number or 'per-patient', got {shift!r}"
        )
    if not isinstance(options.get("keep_descriptions", False), bool):
        raise ValueError("keep_descriptions: expected true or false")
    check_root(options.get("uid_root", "2.25"), "uid_root")


@lru_cache(maxsize=64)
def _settings(key: str) -> Settings:
    options = json.loads(key)
    _check(options)
    if not options.get("salt"):
        raise ValueError(
            "salt is required: a project secret, in the route's options or in "
            "plugin_options.anonymize (it makes pseudonyms and new UIDs unguessable)"
        )
    ids = options.get("patient_ids")
    if isinstance(ids, dict):
        ids = {str(original): str(new) for original, new in ids.items()}
    elif isinstance(ids, str):
        ids = Path(ids)
    shift = options.get("date_shift_days")
    return Settings(
        salt=options["salt"],
        patient_ids=ids,
        refuse_unmapped=options.get("unmapped_ids") == "refuse",
        date_shift_days=shift if type(shift) is int else None,
        per_patient_shift=shift == "per-patient",
        keep_descriptions=options.get("keep_descriptions", False),
        uid_root=options.get("uid_root", "2.25"),
    )


def new_patient_id(original: str, settings: Settings) -> str:
    """The project's ID for a patient: from ``patient_ids``, else a keyed pseudonym."""
    ids = settings.patient_ids
    if isinstance(ids, Path):
        ids = _read_ids(ids, ids.stat().st_mtime_ns)
    if ids and original in ids:
        return ids[original]
    if settings.refuse_unmapped:
        raise ValueError("this patient's ID is not in the project's patient_ids")
    return _keyed(settings.salt, "patient-id", original).hex()[:16].upper()


def _shift_days(original_id: str, settings: Settings) -> int | None:
    if settings.per_patient_shift:
        number = int.from_bytes(_keyed(settings.salt, "date-shift", original_id)[:8], "big")
        return -(1 + number % MAX_PER_PATIENT_SHIFT)
    return settings.date_shift_days


def _shifted(value: str, days: int) -> str:
    """A DA or DT value moved by ``days`` (time and offset kept); empty when not a date."""
    try:
        day = datetime.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    moved = day + datetime.timedelta(days=days)
    return f"{moved.year:04d}{moved.month:02d}{moved.day:02d}{value[8:]}"


def _dummy(vr: str) -> Any:
    if vr in DUMMY:
        return DUMMY[vr]
    if vr in NUMBERS:
        return "0" if vr in ("DS", "IS") else 0
    if vr in BINARY:
        return b"\0\0"
    return DUMMY_TEXT


def _empty(vr: str) -> Any:
    if vr == "SQ":
        return Sequence()
    if vr in NUMBERS or vr in BINARY:
        return None
    return ""


@dataclass(frozen=True)
class _Cleaner:
    """Applies the table to a data set for one patient: new ID, date shift (or None)."""

    table: Profile
    settings: Settings
    patient_id: str
    days: int | None

    def clean(self, dataset: Dataset, dummies: bool = False) -> None:
        """Apply the table to every element of ``dataset`` and of its sequences, in place;
        ``dummies``: inside a D sequence, where unlisted free text gets a dummy too. Values
        are decoded only where something may change."""
        for tag in list(dataset.keys()):
            if tag.is_private:
                del dataset[tag]
            elif tag in (PATIENT_ID, PATIENT_NAME):
                dataset[tag].value = self.patient_id
            elif not (self.settings.keep_descriptions and tag in self.table.descriptions):
                self._element(dataset, tag, self.table.action(tag), dummies)

    def _element(self, dataset: Dataset, tag: BaseTag, action: str | None, dummies: bool) -> None:
        vr = element_vr(dataset, tag)
        if self.days is not None and tag != BIRTH_DATE and vr in ("DA", "DT", "TM"):
            if vr != "TM":  # whole days are shifted: times stay as they are
                element = dataset[tag]
                values = element.value if element.VM > 1 else [element.value]
                shifted = [_shifted(str(v), self.days) for v in values if v]
                element.value = shifted if len(shifted) > 1 else "".join(shifted)
        elif action == "X":
            del dataset[tag]
        elif action == "Z":
            dataset[tag].value = _empty(vr)
        elif vr == "SQ":  # D, U or unlisted: keep the items, clean them
            for item in dataset[tag].value:
                self.clean(item, dummies or action == "D")
        elif action == "D" or (dummies and action is None and vr in FREE_TEXT):
            element = dataset[tag]
            if element.value not in (None, "", b""):
                element.value = _dummy(element.VR)


def _record(dataset: Dataset, settings: Settings, shifted: bool) -> None:
    """PatientIdentityRemoved, DeidentificationMethod and its codes (CID 7050)."""
    methods = [("113100", "Basic Application Confidentiality Profile")]
    if shifted:
        methods.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [meaning for _, meaning in methods] + (
        ["Descriptions retained"] if settings.keep_descriptions else []
    )
    codes = []
    for value, meaning in methods:
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        codes.append(code)
    dataset.DeidentificationMethodCodeSequence = codes
    dataset.LongitudinalTemporalInformationModified = "MODIFIED" if shifted else "REMOVED"


def anonymize(dataset: Dataset, series: SeriesView, options: dict[str, Any]) -> None:
    """The ``anonymize`` transform: the Basic Profile with this route's options."""
    settings = _settings(json.dumps({**_defaults, **options}, sort_keys=True, default=str))
    original_id = str(dataset.get("PatientID", "") or "")
    pid = new_patient_id(original_id, settings)
    days = _shift_days(original_id, settings)
    _Cleaner(profile(), settings, pid, days).clean(dataset)
    remap_uids(dataset, settings.uid_root, settings.salt)
    _record(dataset, settings, days is not None)


@hookimpl
def station_configure(options: dict[str, Any]) -> None:
    _check(options)
    _defaults.clear()
    _defaults.update(options)


@hookimpl
def station_transforms() -> dict[str, Any]:
    return {"anonymize": anonymize}
