"""``set-tags``: a transform that sets or removes data elements, by keyword.

In a route file::

    transform:
      - set-tags:
          set: {InstitutionName: "Research Archive", PatientIdentityRemoved: "YES"}
          remove: [InstitutionAddress, ReferringPhysicianName]

Keywords are checked when the route is used: an unknown keyword fails that copy with a
reason in ``station status`` instead of sending something unexpected.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from station import hookimpl


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return tag


def set_tags(dataset: Dataset, series: object, options: dict[str, Any]) -> None:
    """Set the elements under ``set`` (creating them), delete those under ``remove``."""
    unknown = set(options) - {"set", "remove"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected set and remove")
    for keyword, value in (options.get("set") or {}).items():
        tag = _tag(keyword)
        if keyword in dataset:
            dataset[tag].value = value
        else:
            dataset.add_new(tag, dictionary_VR(tag), value)
    for keyword in options.get("remove") or ():
        _tag(keyword)
        if keyword in dataset:
            del dataset[keyword]


@hookimpl
def station_transforms() -> dict[str, Any]:
    return {"set-tags": set_tags}
