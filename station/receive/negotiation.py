"""How the SCP answers an A-ASSOCIATE-RQ (PS3.8 9.3.2, PS3.7 annex D): who may associate,
which presentation contexts are accepted, in which transfer syntax and roles.

A pure function of the request, the configuration and the peer's address, so that every
rule is testable without a socket and the Conformance Statement (docs/conformance.md) is
rendered from the same tables.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from station.config import ListenConfig
from station.dicom.dimse import VERIFICATION, Command
from station.dicom.files import is_uid
from station.dicom.pdu import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTED,
    APPLICATION_CONTEXT,
    REASON_APPLICATION_CONTEXT_NOT_SUPPORTED,
    REASON_CALLED_AE_NOT_RECOGNIZED,
    REASON_CALLING_AE_NOT_RECOGNIZED,
    REASON_PROTOCOL_VERSION_NOT_SUPPORTED,
    REJECTED_PERMANENT,
    SOURCE_PROVIDER_ACSE,
    SOURCE_USER,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    USER_REJECTED,
    Association,
    PresentationContext,
    Rejection,
)


@dataclass(frozen=True)
class Refusal:
    """An A-ASSOCIATE-RJ to send, the metric label and a log message (no PHI in it)."""

    rejection: Rejection
    reason: str
    message: str


def accepts_abstract_syntax(abstract_syntax: str) -> bool:
    """Verification, and every storage SOP class: known, private or not yet known (a router
    must take what the modality sends). Other known services (query, worklist...) are not
    offered here."""
    service = uid_to_service_class(abstract_syntax)
    return abstract_syntax == VERIFICATION or service in (StorageServiceClass, ServiceClass)


class Policy:
    """The SCP's negotiation rules, from ``listen`` and the station's AE title."""

    def __init__(self, ae_title: str, listen: ListenConfig) -> None:
        self.listen = listen
        self.called_aes = frozenset(listen.called_aes or (ae_title,))
        self.syntaxes = frozenset(listen.transfer_syntaxes)
        self.anywhere = frozenset(listen.allowed_calling_aes) | {
            ae for ae, peer in listen.peers.items() if not peer.hosts
        }
        self.networks = {
            ae: [ipaddress.ip_network(host) for host in peer.hosts]
            for ae, peer in listen.peers.items()
            if peer.hosts
        }

    def refuse(self, request: Association, host: str) -> Refusal | None:
        """Why the association must be rejected, or None when it may go on (the per-host
        and total limits are the caller's)."""
        if not request.protocol_version & 1:
            return Refusal(
                Rejection(
                    REJECTED_PERMANENT, SOURCE_PROVIDER_ACSE, REASON_PROTOCOL_VERSION_NOT_SUPPORTED
                ),
                "protocol_version",
                f"protocol version bits 0x{request.protocol_version:04X} do not include version 1",
            )
        if request.application_context != APPLICATION_CONTEXT:
            return Refusal(
                Rejection(
                    REJECTED_PERMANENT, SOURCE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED
                ),
                "application_context",
                f"application context {request.application_context!r} is not the DICOM one "
                f"({APPLICATION_CONTEXT})",
            )
        if self.listen.check_called_ae and request.called_ae not in self.called_aes:
            return Refusal(
                Rejection(REJECTED_PERMANENT, SOURCE_USER, REASON_CALLED_AE_NOT_RECOGNIZED),
                "called_ae",
                f"called AE title {request.called_ae!r} is not ours "
                f"({', '.join(sorted(self.called_aes))}; listen.called_aes)",
            )
        calling = request.calling_ae
        if not self.listen.access_controlled or calling in self.anywhere:
            return None
        networks = self.networks.get(calling)
        if networks is None:
            return Refusal(
                Rejection(REJECTED_PERMANENT, SOURCE_USER, REASON_CALLING_AE_NOT_RECOGNIZED),
                "calling_ae",
                f"calling AE title {calling!r} is not in listen.allowed_calling_aes or "
                "listen.peers",
            )
        address = ipaddress.ip_address(host.partition("%")[0])  # without an IPv6 zone
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # a dual-stack listener's view of an IPv4 peer
        if not any(address in network for network in networks):
            return Refusal(
                Rejection(REJECTED_PERMANENT, SOURCE_USER, REASON_CALLING_AE_NOT_RECOGNIZED),
                "peer_host",
                f"calling AE title {calling!r} is not allowed from {host} "
                f"(listen.peers.{calling}.hosts)",
            )
        return None

    def answer(self, request: Association, max_pdu: int) -> Association:
        """The A-ASSOCIATE-AC's content: each context accepted with the first proposed
        transfer syntax the station takes (the sender's preference: the data set is stored
        and forwarded in it), or refused with the reason.

        Roles (PS3.7 D.3.3.4): the station is only ever the SCP here. A requestor asking to
        be SCU keeps that role (answered SCU 1, SCP 0); one asking to be the SCP only would
        leave the context without a role on either side, so that context is refused (user
        rejection), as pynetdicom and DCMTK do, and no role item is returned for it."""
        roles: dict[str, tuple[int, int]] = {}
        for cx in request.contexts:
            proposed_role = request.roles.get(cx.abstract_syntax)
            usable = [ts for ts in cx.transfer_syntaxes if ts in self.syntaxes]
            # A refused context echoes a proposed syntax (its value is not significant);
            # anything but a UID would not encode.
            cx.transfer_syntaxes = (
                usable[:1] or [ts for ts in cx.transfer_syntaxes if is_uid(ts)][:1]
            )
            if not accepts_abstract_syntax(cx.abstract_syntax):
                cx.result = ABSTRACT_SYNTAX_NOT_SUPPORTED
            elif not usable:
                cx.result = TRANSFER_SYNTAXES_NOT_SUPPORTED
            elif proposed_role is not None and not proposed_role[0]:
                cx.result = USER_REJECTED
            else:
                cx.result = ACCEPTED
                if proposed_role is not None:
                    roles[cx.abstract_syntax] = (1, 0)
        return Association(
            called_ae=request.called_ae,
            calling_ae=request.calling_ae,
            contexts=request.contexts,
            max_pdu=max_pdu,
            roles=roles,
        )


def sop_class_mismatch(command: Command, context: PresentationContext) -> str:
    """Why a request's Affected SOP Class UID does not fit its presentation context
    (PS3.7 9.1.1.1.1: refused with 0x0122, SOP class not supported), or ""."""
    sop_class = command.get("AffectedSOPClassUID")
    if sop_class is None or sop_class == context.abstract_syntax:
        return ""
    return (
        f"SOP class {sop_class} on presentation context {context.id}, "
        f"which is for {context.abstract_syntax}"
    )
