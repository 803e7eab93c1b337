"""``type: dicom`` destinations: a C-STORE SCU, one association per series batch.

Every C-STORE status is checked. Success and warning statuses count as sent, a warning
(0x0001, 0xBxxx) with its Error Comment kept per instance; 0xA7xx (out of resources), an
aborted association or a missing response raise TransientSendError so the whole batch is
retried; any other failure status, or no accepted presentation context for an instance's
SOP class and transfer syntax, refuses that instance permanently. An association the peer
rejects is classified by PS3.8 table 9-21: rejected-transient is retried, rejected-permanent
(such as called AE title not recognized) raises PermanentSendError: asking again will not
help until someone changes a setting.
Untransformed instances are sent from their spool file as they are (no decode). Each
instance's syntaxes come from the destination's ``transfer_syntaxes`` (by default: the one
it was stored in, then Explicit and Implicit VR Little Endian), one presentation context
each; it goes in the first of them the peer accepted, converted by station.dicom.transcode
when that is not the stored one (one instance in memory at a time). When none can be used
the instance is refused permanently, with the SOP class and syntaxes named.
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
    ExplicitVRBigEndian,
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
from station.dicom.transcode import SyntaxPolicy, TranscodeError, convert, even_lengths
from station.dicom.uids import uid_name
from station.dispatch.base import Prepare, SendResult
from station.errors import PermanentSendError, TransientSendError
from station.store.records import Instance

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # presentation contexts one association may propose
DEFAULT_POLICY = SyntaxPolicy()  # stored syntax, else Explicit, else Implicit VR Little Endian


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


def _proposals(sop_class: str, syntax: str, policy: SyntaxPolicy) -> list[tuple[str, str]]:
    """The presentation contexts (SOP class, one transfer syntax each, so that the peer can
    accept several) for an instance of ``sop_class`` stored in ``syntax``."""
    return [(sop_class, ts) for ts in policy.syntaxes(syntax)]


def _chunks(
    instances: list[Instance], policy: SyntaxPolicy
) -> Iterator[tuple[list[tuple[str, list[str]]], list[Instance]]]:
    """Split instances so each association needs at most MAX_CONTEXTS contexts."""
    contexts: list[tuple[str, str]] = []
    group: list[Instance] = []
    for inst in instances:
        new = [
            cx
            for cx in _proposals(inst.sop_class, inst.transfer_syntax, policy)
            if cx not in contexts
        ]
        if len(contexts) + len(new) > MAX_CONTEXTS:
            yield [(sop, [ts]) for sop, ts in contexts], group
            contexts, group = [], []
            new = _proposals(inst.sop_class, inst.transfer_syntax, policy)
        contexts.extend(new)
        group.append(inst)
    if group:
        yield [(sop, [ts]) for sop, ts in contexts], group


class _Lost(Exception):
    """The association broke down during the C-STORE of ``group[index]``."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def store(
    peer: Peer,
    instances: list[Instance],
    prepare: Prepare = None,
    policy: SyntaxPolicy = DEFAULT_POLICY,
) -> SendResult:
    """Send instances over as few associations as their presentation contexts allow.

    When the peer aborts (or stops answering) in the middle, sending goes on over a new
    association with the instances after the one in flight, which is tried again last. An
    instance the peer aborts on twice while others go through is refused for good (a peer
    that cannot take that one file, such as storescp on an odd fragment length), so it no
    longer holds back its series. A failure on the first C-STORE of a new association is the
    peer's problem, not the instance's: TransientSendError, the whole batch later.
    """
    result = SendResult()
    for contexts, group in _chunks(instances, policy):
        if not contexts:  # nothing these instances could be sent in: no association
            for inst in group:
                result.failed[inst.sop_uid] = f"{peer}: {_unsendable(inst, policy, set(), [])}"
            continue
        pending, aborts = group, dict.fromkeys((inst.sop_uid for inst in group), 0)
        while pending:
            assoc = _associate(peer, contexts)
            try:
                _store_group(assoc, peer, pending, prepare, policy, result)
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
    """A (transformed or converted) data set encoded in ``syntax``, every value of even
    length; the command carries the UIDs the data set has now."""
    data = encode(
        even_lengths(ds),
        is_implicit_vr=syntax == ImplicitVRLittleEndian,
        is_little_endian=syntax != ExplicitVRBigEndian,
        deflated=syntax == DeflatedExplicitVRLittleEndian,
    )
    if data is None:
        raise PermanentSendError(f"the data set cannot be encoded in {uid_name(syntax)}")
    return Payload(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, io.BytesIO(data))


def _spooled(inst: Instance) -> Payload:
    """The spool file as it is, from the start of its data set."""
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


def _read(inst: Instance) -> Dataset:
    try:
        return dcmread(inst.path)
    except FileNotFoundError as exc:
        raise PermanentSendError(f"spool file {inst.path} is missing") from exc


def _unsendable(
    inst: Instance, policy: SyntaxPolicy, accepted: set[str], problems: list[str]
) -> str:
    """Why an instance cannot be sent over an association that accepted ``accepted`` for
    its SOP class, in words, syntaxes and SOP class named."""
    what = f"{uid_name(inst.sop_class)} stored in {uid_name(inst.transfer_syntax)}"
    if problems:
        return f"{what}: " + "; ".join(problems)
    offered = policy.syntaxes(inst.transfer_syntax)
    if not offered:
        return f"{what}: none of the destination's transfer_syntaxes can be used: " + "; ".join(
            policy.excluded(inst.transfer_syntax)
        )
    if accepted:
        refused = [
            f"not {uid_name(ts)}: {policy.refusal(inst.transfer_syntax, ts) or 'not listed'}"
            for ts in sorted(accepted)
        ]
        return f"{what}: the peer accepts this SOP class only in other syntaxes: " + "; ".join(
            refused
        )
    return f"{what}: no presentation context accepted for it in " + ", ".join(
        uid_name(ts) for ts in offered
    )


def _payload(inst: Instance, prepare: Prepare, accepted: set[str], policy: SyntaxPolicy) -> Payload:
    """The spool file as it is whenever possible; a re-encoding when transformed or when it
    must be converted to an accepted syntax (tried in the destination's order, the next one
    when a conversion fails). Raises PermanentSendError when it can go in none."""
    problems: list[str] = []
    for target in policy.syntaxes(inst.transfer_syntax):
        if target not in accepted:
            continue
        if target == inst.transfer_syntax and prepare is None:
            return _spooled(inst)
        ds = prepare(inst) if prepare is not None else _read(inst)
        try:
            converted = convert(ds, inst.transfer_syntax, target, policy)
        except TranscodeError as exc:
            problems.append(str(exc))
            continue
        if target != inst.transfer_syntax:
            log.debug(
                "%s converted from %s to %s",
                inst.sop_uid,
                uid_name(inst.transfer_syntax),
                uid_name(target),
            )
        return _encoded(converted, target)
    raise PermanentSendError(_unsendable(inst, policy, accepted, problems))


def _remaining(fh: IO[bytes]) -> int:
    here = fh.tell()
    end = fh.seek(0, io.SEEK_END)
    fh.seek(here)
    return end - here


def _store_group(
    assoc: Requestor,
    peer: Peer,
    group: list[Instance],
    prepare: Prepare,
    policy: SyntaxPolicy,
    result: SendResult,
) -> None:
    accepted = assoc.accepted()
    for index, inst in enumerate(group):
        try:
            payload = _payload(inst, prepare, accepted.get(inst.sop_class, set()), policy)
        except PermanentSendError as exc:
            result.failed[inst.sop_uid] = f"{peer}: {exc}"
            continue
        except Exception as exc:
            result.failed[inst.sop_uid] = f"transform failed: {type(exc).__name__}: {exc}"
            continue
        with payload.data as data:
            if payload.syntax not in accepted.get(payload.sop_class, set()):
                result.failed[inst.sop_uid] = (
                    f"{peer}: no presentation context for {uid_name(payload.sop_class)} in "
                    f"{uid_name(payload.syntax)} (SOP class changed by a transform from "
                    f"{uid_name(inst.sop_class)})"
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
        self.policy = SyntaxPolicy(config.transfer_syntaxes, config.allow_lossy)

    def send(self, instances: list[Instance], prepare: Prepare) -> SendResult:
        return store(self.peer, instances, prepare, self.policy)
