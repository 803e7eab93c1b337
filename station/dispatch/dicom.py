"""``type: dicom`` destinations: a C-STORE SCU, one association per series batch.

Every C-STORE status is checked. Success and warning statuses count as sent, a warning
(0x0001, 0xBxxx) with its Error Comment kept per instance; 0xA7xx (out of resources), an
aborted association or a missing response raise TransientSendError so the whole batch is
retried; any other failure status, or no accepted presentation context for an instance's
SOP class and transfer syntax, refuses that instance permanently. An association the peer
rejects is classified by PS3.8 table 9-21: rejected-transient is retried, rejected-permanent
(such as called AE title not recognized) raises PermanentSendError: asking again will not
help until someone changes a setting.
Untransformed instances are sent from their spool file as they are (no decode). For an
instance in a little endian uncompressed syntax the SCU also offers Explicit and Implicit
VR Little Endian, and converts only when the peer refuses the original syntax.
"""

from __future__ import annotations

import io
import logging
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode

from station.config import DicomDestinationConfig
from station.dicom.dimse import VERIFICATION
from station.dicom.files import dataset_start
from station.dicom.scu import (
    AssociationError,
    AssociationRejected,
    ConnectFailed,
    Requestor,
)
from station.dicom.status import status_category
from station.dicom.tls import client_context
from station.dispatch.base import Prepare, SendResult
from station.errors import PermanentSendError, TransientSendError
from station.store.records import Instance

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # presentation contexts one association may propose
# Syntaxes converted between without decoding pixel data (explicit <-> implicit VR,
# deflated <-> inflated). Big endian is not among them: its pixel words would need swapping.
CONVERTIBLE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


@dataclass(frozen=True)
class Peer:
    """Where and how to reach a DICOM peer."""

    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "STATION"
    timeout_seconds: float = 30.0
    max_pdu_bytes: int = 4_194_304
    tls: ssl.SSLContext | None = None

    @classmethod
    def configured(cls, config: DicomDestinationConfig, calling_ae_title: str) -> Peer:
        tls = config.tls
        return cls(
            host=config.host,
            port=config.port,
            ae_title=config.ae_title,
            calling_ae_title=calling_ae_title,
            timeout_seconds=config.timeout_seconds,
            max_pdu_bytes=config.max_pdu_bytes,
            tls=client_context(tls.ca, tls.certificate, tls.key, tls.check_hostname)
            if tls is not None
            else None,
        )

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


def _associate(peer: Peer, contexts: list[tuple[str, list[str]]]) -> Requestor:
    try:
        return Requestor.connect(
            (peer.host, peer.port),
            peer.ae_title,
            peer.calling_ae_title,
            contexts,
            peer.max_pdu_bytes,
            peer.timeout_seconds,
            peer.tls,
        )
    except ConnectFailed as exc:
        raise TransientSendError(
            f"cannot connect to {peer}: {exc} (connection refused, or no answer within "
            f"{peer.timeout_seconds:g} s)"
        ) from exc
    except AssociationRejected as exc:
        if exc.rejection.permanent:
            raise PermanentSendError(f"{peer} {exc}") from exc
        raise TransientSendError(f"{peer} {exc}") from exc
    except AssociationError as exc:
        raise TransientSendError(f"{peer} {exc}") from exc


def echo(peer: Peer) -> None:
    """C-ECHO the peer; raise a SendError saying what went wrong."""
    assoc = _associate(peer, [(VERIFICATION, [ImplicitVRLittleEndian])])
    try:
        status = assoc.echo()
    except AssociationError as exc:
        raise TransientSendError(f"{peer} did not answer the C-ECHO: {exc}") from exc
    assoc.release()
    if status != 0:
        raise PermanentSendError(f"{peer} answered C-ECHO with status 0x{status:04X}")


def _proposals(sop_class: str, syntax: str) -> list[tuple[str, list[str]]]:
    """The presentation contexts to propose for one SOP class and transfer syntax: the
    original, then (for uncompressed data) the little endian syntaxes to convert to."""
    contexts: list[tuple[str, list[str]]] = [(sop_class, [syntax])]
    if syntax in CONVERTIBLE:
        fallback: list[str] = [
            ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts != syntax
        ]
        contexts.append((sop_class, fallback))
    return contexts


def _chunks(
    instances: list[Instance],
) -> Iterator[tuple[list[tuple[str, list[str]]], list[Instance]]]:
    """Split instances so each association needs at most MAX_CONTEXTS contexts."""
    contexts: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, str]] = set()
    group: list[Instance] = []
    for inst in instances:
        key = (inst.sop_class, inst.transfer_syntax)
        if key not in seen:
            proposals = _proposals(*key)
            if len(contexts) + len(proposals) > MAX_CONTEXTS:
                yield contexts, group
                contexts, group, seen = [], [], set()
            contexts.extend(proposals)
            seen.add(key)
        group.append(inst)
    if group:
        yield contexts, group


class _Lost(Exception):
    """The association broke down during the C-STORE of ``group[index]``."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def store(peer: Peer, instances: list[Instance], prepare: Prepare = None) -> SendResult:
    """Send instances over as few associations as their presentation contexts allow.

    When the peer aborts (or stops answering) in the middle, sending goes on over a new
    association with the instances after the one in flight, which is tried again last. An
    instance the peer aborts on twice while others go through is refused for good (a peer
    that cannot take that one file, such as storescp on an odd fragment length), so it no
    longer holds back its series. A failure on the first C-STORE of a new association is the
    peer's problem, not the instance's: TransientSendError, the whole batch later.
    """
    result = SendResult()
    for contexts, group in _chunks(instances):
        pending, aborts = group, dict.fromkeys((inst.sop_uid for inst in group), 0)
        while pending:
            assoc = _associate(peer, contexts)
            try:
                _store_group(assoc, peer, pending, prepare, result)
            except _Lost as lost:
                inst = pending[lost.index]
                aborts[inst.sop_uid] += 1
                if lost.index == 0 and aborts[inst.sop_uid] == 1:
                    raise TransientSendError(
                        f"{peer}: no C-STORE response (association aborted or timed out) "
                        f"after {result.sent} of {len(instances)} instances: {lost}"
                    ) from lost
                later = pending[lost.index + 1 :]
                if aborts[inst.sop_uid] < 2:
                    pending = [*later, inst]
                    continue
                result.failed[inst.sop_uid] = (
                    f"{peer} aborted the association each time this instance was sent "
                    f"({aborts[inst.sop_uid]} times) while it accepted others: {lost}"
                )
                pending = later
                continue
            except BaseException:
                assoc.abort()
                raise
            assoc.release()
            break
    return result


@dataclass
class Payload:
    """What one C-STORE sends: the data set's bytes from ``data``'s position, in ``syntax``."""

    sop_class: str
    sop_uid: str
    syntax: str
    data: IO[bytes]


def _encoded(ds: Dataset, syntax: str) -> Payload:
    """A (transformed or converted) data set encoded in a little endian ``syntax``; the
    command carries the UIDs the data set has now."""
    data = encode(
        ds,
        is_implicit_vr=syntax == ImplicitVRLittleEndian,
        is_little_endian=True,
        deflated=syntax == DeflatedExplicitVRLittleEndian,
    )
    if data is None:
        raise PermanentSendError(f"the data set cannot be encoded in {syntax}")
    return Payload(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, io.BytesIO(data))


def _payload(inst: Instance, prepare: Prepare, syntaxes: set[str]) -> Payload:
    """The spool file as it is whenever possible; a re-encoding when transformed or when it
    must be converted to an accepted little endian syntax. Raises PermanentSendError when
    the peer accepted no syntax this instance can go in."""
    if inst.transfer_syntax in syntaxes:
        if prepare is not None:
            return _encoded(prepare(inst), inst.transfer_syntax)
        try:
            fh = open(inst.path, "rb")  # noqa: SIM115 -- closed by the caller
        except FileNotFoundError as exc:
            raise PermanentSendError(f"spool file {inst.path} is missing") from exc
        try:
            dataset_start(fh)
        except (ValueError, struct.error) as exc:
            fh.close()
            raise PermanentSendError(f"spool file {inst.path} is not a DICOM file: {exc}") from exc
        return Payload(inst.sop_class, inst.sop_uid, inst.transfer_syntax, fh)
    usable = [ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts in syntaxes]
    if inst.transfer_syntax in CONVERTIBLE and usable:
        return _encoded(prepare(inst) if prepare is not None else dcmread(inst.path), usable[0])
    raise PermanentSendError(
        f"no presentation context accepted for SOP class {inst.sop_class} "
        f"with transfer syntax {inst.transfer_syntax}"
    )


def _remaining(fh: IO[bytes]) -> int:
    here = fh.tell()
    end = fh.seek(0, io.SEEK_END)
    fh.seek(here)
    return end - here


def _store_group(
    assoc: Requestor, peer: Peer, group: list[Instance], prepare: Prepare, result: SendResult
) -> None:
    accepted = assoc.accepted()
    for index, inst in enumerate(group):
        try:
            payload = _payload(inst, prepare, accepted.get(inst.sop_class, set()))
        except PermanentSendError as exc:
            result.failed[inst.sop_uid] = f"{peer}: {exc}"
            continue
        except Exception as exc:
            result.failed[inst.sop_uid] = f"transform failed: {type(exc).__name__}: {exc}"
            continue
        with payload.data as data:
            if payload.syntax not in accepted.get(payload.sop_class, set()):
                result.failed[inst.sop_uid] = (
                    f"{peer}: no presentation context for SOP class {payload.sop_class} "
                    f"(changed by a transform from {inst.sop_class})"
                )
                continue
            try:
                status = assoc.store(
                    payload.sop_class, payload.sop_uid, payload.syntax, data, _remaining(data)
                )
            except AssociationError as exc:
                raise _Lost(index, str(exc)) from exc
        code = int(status.get("Status", -1))
        category = status_category(code)
        if category == "Warning":
            result.warnings[inst.sop_uid] = (code, str(status.get("ErrorComment", "")))
        if category in ("Success", "Warning"):
            result.sent += 1
        elif 0xA700 <= code <= 0xA7FF:
            raise TransientSendError(f"{peer}: out of resources (status 0x{code:04X})")
        else:
            comment = status.get("ErrorComment", "")
            result.failed[inst.sop_uid] = f"{peer} refused with status 0x{code:04X}" + (
                f": {comment}" if comment else ""
            )


class DicomDestination:
    """A configured DICOM peer."""

    def __init__(self, name: str, config: DicomDestinationConfig, station_ae: str) -> None:
        self.name = name
        self.peer = Peer.configured(config, config.calling_ae_title or station_ae)

    def send(self, instances: list[Instance], prepare: Prepare) -> SendResult:
        return store(self.peer, instances, prepare)
