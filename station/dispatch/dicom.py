"""``type: dicom`` destinations: a C-STORE SCU, one association per series batch.

Every C-STORE status is checked. Success and warning statuses count as sent; 0xA7xx (out
of resources), an aborted association or a missing response raise TransientSendError so
the whole batch is retried; any other failure status, or no accepted presentation context
for an instance's SOP class and transfer syntax, refuses that instance permanently.
Untransformed instances are sent from their spool file as they are (no decode). For an
instance in a little endian uncompressed syntax the SCU also offers Explicit and Implicit
VR Little Endian, and converts only when the peer refuses the original syntax.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from station import tuning
from station.config import DicomDestinationConfig
from station.dispatch.base import Prepare, SendResult
from station.errors import PermanentSendError, TransientSendError
from station.records import Instance

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # presentation contexts one association may propose
VERIFICATION = "1.2.840.10008.1.1"
# Syntaxes pynetdicom converts between without decoding pixel data (explicit <-> implicit
# VR, deflated <-> inflated). Big endian is not among them: its pixel words would need
# swapping.
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

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _new_ae(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = peer.timeout_seconds
    ae.dimse_timeout = peer.timeout_seconds
    ae.network_timeout = peer.timeout_seconds
    ae.connection_timeout = peer.timeout_seconds
    ae.maximum_pdu_size = peer.max_pdu_bytes
    return ae


def _associate(ae: AE, peer: Peer) -> Association:
    connected: list[bool] = []
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        max_pdu=peer.max_pdu_bytes,
        evt_handlers=[*tuning.HANDLERS, (evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
    )
    if assoc.is_established:
        return assoc
    if not connected:
        raise TransientSendError(
            f"cannot connect to {peer}: connection refused, or no answer within "
            f"{peer.timeout_seconds:g} s"
        )
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        reason = rsp.reason_str if rsp is not None else "unknown reason"
        raise TransientSendError(f"{peer} rejected the association: {reason}")
    raise TransientSendError(f"{peer} aborted the association request (or did not answer it)")


def echo(peer: Peer) -> None:
    """C-ECHO the peer; raise a SendError saying what went wrong."""
    ae = _new_ae(peer)
    ae.add_requested_context(VERIFICATION)
    assoc = _associate(ae, peer)
    try:
        tuning.pause_reactor(assoc)
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if not status:
        raise TransientSendError(f"{peer} did not answer the C-ECHO")
    if status.Status != 0:
        raise PermanentSendError(f"{peer} answered C-ECHO with status 0x{status.Status:04X}")


def _proposals(sop_class: str, syntax: str) -> list[tuple[str, list[str]]]:
    """The presentation contexts to propose for one SOP class and transfer syntax: the
    original, then (for uncompressed data) the little endian syntaxes to convert to."""
    contexts = [(sop_class, [syntax])]
    if syntax in CONVERTIBLE:
        fallback = [ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts != syntax]
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


def store(peer: Peer, instances: list[Instance], prepare: Prepare = None) -> SendResult:
    """Send instances over as few associations as their presentation contexts allow."""
    tuning.configure()
    result = SendResult()
    for contexts, group in _chunks(instances):
        ae = _new_ae(peer)
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        assoc = _associate(ae, peer)
        try:
            _store_group(assoc, peer, group, prepare, result)
        finally:
            if assoc.is_established:
                assoc.release()
    return result


def _accepted(assoc: Association) -> dict[str, set[str]]:
    """SOP class -> transfer syntaxes the peer accepted for it."""
    accepted: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return accepted


def _payload(inst: Instance, prepare: Prepare, syntaxes: set[str]) -> Dataset | str:
    """What to hand to send_c_store: the spool file as it is whenever possible; a data set
    when transformed or when it must be converted to an accepted uncompressed syntax.
    Raises PermanentSendError when the peer accepted no syntax this instance can go in."""
    if inst.transfer_syntax in syntaxes:
        if prepare is not None:
            return prepare(inst)
        if not inst.path.exists():
            raise PermanentSendError(f"spool file {inst.path} is missing")
        return str(inst.path)
    if inst.transfer_syntax in CONVERTIBLE and syntaxes & CONVERTIBLE:
        # pynetdicom re-encodes a little endian data set in the accepted syntax.
        return prepare(inst) if prepare is not None else dcmread(inst.path)
    raise PermanentSendError(
        f"no presentation context accepted for SOP class {inst.sop_class} "
        f"with transfer syntax {inst.transfer_syntax}"
    )


def _store_group(
    assoc: Association, peer: Peer, group: list[Instance], prepare: Prepare, result: SendResult
) -> None:
    accepted = _accepted(assoc)
    for inst in group:
        try:
            payload = _payload(inst, prepare, accepted.get(inst.sop_class, set()))
        except PermanentSendError as exc:
            result.failed[inst.sop_uid] = f"{peer}: {exc}"
            continue
        except Exception as exc:
            result.failed[inst.sop_uid] = f"transform failed: {type(exc).__name__}: {exc}"
            continue
        try:
            tuning.pause_reactor(assoc)
            status = assoc.send_c_store(payload)
        except (RuntimeError, ValueError, AttributeError) as exc:
            # pynetdicom raises these when the association died under us.
            raise TransientSendError(f"{peer}: C-STORE failed: {exc}") from exc
        if not status or "Status" not in status:
            assoc.abort()
            raise TransientSendError(
                f"{peer}: no C-STORE response (association aborted or DIMSE timeout) "
                f"after {result.sent} of {len(group)} instances"
            )
        code = int(status.Status)
        category = code_to_category(code)
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
        self.peer = Peer(
            host=config.host,
            port=config.port,
            ae_title=config.ae_title,
            calling_ae_title=config.calling_ae_title or station_ae,
            timeout_seconds=config.timeout_seconds,
            max_pdu_bytes=config.max_pdu_bytes,
        )

    def send(self, instances: list[Instance], prepare: Prepare) -> SendResult:
        return store(self.peer, instances, prepare)
