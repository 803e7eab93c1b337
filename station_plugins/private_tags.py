"""``private-tags``: a project's private block, laid out like RSNA CTP's.

A transform. It writes the private block that CTP's DICOM anonymizer writes, so receiving
systems built for CTP output (and people used to it) find the project where they expect it:

============  ==========  ====================
element       option      value
============  ==========  ====================
(0013,0010)               private creator ``CTP``
(0013,xx10)   project     project name
(0013,xx11)   trial       trial name
(0013,xx12)   site_name   site name
(0013,xx13)   site        site ID
============  ==========  ====================

``xx`` is the block the creator ``CTP`` owns in group 0013: ``10`` unless the data set
already holds another creator there (an existing ``CTP`` block is reused and its values
replaced). Values are LO (at most 64 characters, no backslash). Run it after ``anonymize``,
which removes every private element.

Options, in a route file (``plugin_options.private-tags`` in the config gives defaults for
every route, e.g. this station's ``site`` and ``site_name``):

``project`` (required)
    the project name.
``trial``, ``site_name``, ``site`` (optional)
    written only when given; numbers are written as text (quote them in YAML to keep
    leading zeros).

Example::

    # station.yaml
    plugin_options:
      private-tags: {site: "77779002", site_name: "North Hospital"}

    # routes/research.yaml
    name: luad
    transform:
      - anonymize: {}
      - private-tags: {project: TCGA-LUAD, trial: LUAD-2024}
    destinations: [research-pacs]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from station import hookimpl

if TYPE_CHECKING:
    from station.series import SeriesView

GROUP = 0x0013
CREATOR = "CTP"
OFFSETS = {"project": 0x10, "trial": 0x11, "site_name": 0x12, "site": 0x13}
_defaults: dict[str, Any] = {}


def _values(options: Mapping[str, Any]) -> dict[str, str]:
    """The given options as LO values; ValueError names a wrong one."""
    unknown = set(options) - set(OFFSETS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected {', '.join(OFFSETS)}")
    values = {}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"{key}: expected text, got {value!r}")
        text = str(value)
        if not text or len(text) > 64 or "\\" in text:
            raise ValueError(f"{key}: expected 1 to 64 characters without a backslash")
        values[key] = text
    return values


def private_tags(dataset: Dataset, series: SeriesView, options: dict[str, Any]) -> None:
    """The ``private-tags`` transform: the CTP block with this route's project and site."""
    values = _values({**_defaults, **options})
    if "project" not in values:
        raise ValueError("project is required (the project name written at (0013,xx10))")
    block = dataset.private_block(GROUP, CREATOR, create=True)
    for key, text in values.items():
        block.add_new(OFFSETS[key], "LO", text)


@hookimpl
def station_configure(options: dict[str, Any]) -> None:
    _values(options)
    _defaults.clear()
    _defaults.update(options)


@hookimpl
def station_transforms() -> dict[str, Any]:
    return {"private-tags": private_tags}
