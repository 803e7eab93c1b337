"""The SCP's negotiation rules (station/receive/negotiation.py), in process: who may associate
and what each presentation context gets. tests/test_node_security.py checks the same on the
wire against DCMTK and pynetdicom."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom.sop_class import CTImageStorage

from station.config import ListenConfig
from station.dicom.dimse import VERIFICATION
from station.dicom.pdu import Association, PresentationContext
from station.receive.negotiation import Policy


def request(**fields: Any) -> Association:
    contexts = fields.pop(
        "contexts", [PresentationContext(1, CTImageStorage, [ExplicitVRLittleEndian])]
    )
    return Association(
        called_ae=fields.pop("called_ae", "STATION"),
        calling_ae=fields.pop("calling_ae", "MODALITY"),
        contexts=contexts,
        **fields,
    )


def refusal(
    listen: dict[str, Any], host: str = "127.0.0.1", **fields: Any
) -> tuple[int, int, int, str] | None:
    refused = Policy("STATION", ListenConfig(**listen)).refuse(request(**fields), host)
    if refused is None:
        return None
    r = refused.rejection
    return r.result, r.source, r.reason, refused.reason


@pytest.mark.parametrize("version", [0, 2])
def test_a_protocol_version_without_version_1_is_rejected_by_the_acse(version: int) -> None:
    assert refusal({}, protocol_version=version) == (1, 2, 2, "protocol_version")


def test_protocol_version_bits_including_version_1_are_accepted() -> None:
    assert refusal({}, protocol_version=3) is None


def test_another_application_context_is_rejected_by_the_user() -> None:
    assert refusal({}, application_context="1.2.3.4") == (1, 1, 2, "application_context")


def test_the_called_ae_must_be_ours_unless_told_otherwise() -> None:
    assert refusal({}, called_ae="ANY-SCP") == (1, 1, 7, "called_ae")
    assert refusal({"check_called_ae": False}, called_ae="ANY-SCP") is None
    assert refusal({"called_aes": ["EDGE1", "EDGE2"]}, called_ae="EDGE2") is None
    assert refusal({"called_aes": ["EDGE1"]}, called_ae="STATION") == (1, 1, 7, "called_ae")


def test_calling_aes_by_name_and_by_address() -> None:
    listen = {
        "allowed_calling_aes": ["ANYWHERE1"],
        "peers": {"ANYWHERE2": None, "CT1": {"hosts": ["10.0.0.0/24", "192.168.1.7"]}},
    }
    assert refusal(listen, calling_ae="ANYWHERE1", host="203.0.113.9") is None
    assert refusal(listen, calling_ae="ANYWHERE2", host="203.0.113.9") is None
    assert refusal(listen, calling_ae="CT1", host="10.0.0.200") is None
    assert refusal(listen, calling_ae="CT1", host="192.168.1.7") is None
    assert refusal(listen, calling_ae="CT1", host="192.168.1.8") == (1, 1, 3, "peer_host")
    assert refusal(listen, calling_ae="CT1", host="::ffff:10.0.0.9") is None  # dual stack
    assert refusal(listen, calling_ae="CT1", host="fe80::1%eth0") == (1, 1, 3, "peer_host")
    assert refusal(listen, calling_ae="STRANGER", host="10.0.0.1") == (1, 1, 3, "calling_ae")
    assert refusal({}, calling_ae="STRANGER") is None  # no access control configured


def test_a_host_that_is_not_an_address_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="host names are not resolved"):
        ListenConfig(peers={"CT1": {"hosts": ["ct1.example.org"]}})


def answered(
    listen: dict[str, Any], contexts: list[PresentationContext], **fields: Any
) -> Association:
    return Policy("STATION", ListenConfig(**listen)).answer(
        request(contexts=contexts, **fields), 16384
    )


def test_transfer_syntaxes_outside_the_list_are_refused_the_first_listed_proposed_is_taken() -> (
    None
):
    accept = answered(
        {},
        [
            PresentationContext(1, CTImageStorage, ["1.2.3.999"]),
            PresentationContext(
                3, CTImageStorage, ["1.2.3.999", JPEG2000Lossless, ExplicitVRLittleEndian]
            ),
            PresentationContext(5, CTImageStorage, ["not a uid"]),
        ],
    )
    assert [(cx.id, cx.result, cx.transfer_syntaxes) for cx in accept.contexts] == [
        (1, 4, ["1.2.3.999"]),
        (3, 0, [JPEG2000Lossless]),
        (5, 4, []),
    ]


def test_a_configured_list_of_transfer_syntaxes_narrows_what_is_taken() -> None:
    listen = {"transfer_syntaxes": [ImplicitVRLittleEndian, ExplicitVRLittleEndian]}
    accept = answered(
        listen,
        [
            PresentationContext(1, CTImageStorage, [JPEG2000Lossless]),
            PresentationContext(3, CTImageStorage, [JPEG2000Lossless, ImplicitVRLittleEndian]),
        ],
    )
    assert [(cx.result, cx.transfer_syntaxes) for cx in accept.contexts] == [
        (4, [JPEG2000Lossless]),
        (0, [ImplicitVRLittleEndian]),
    ]


def test_role_selection_the_station_is_only_ever_the_scp() -> None:
    contexts = [
        PresentationContext(1, CTImageStorage, [ExplicitVRLittleEndian]),
        PresentationContext(3, VERIFICATION, [ImplicitVRLittleEndian]),
    ]
    scp_only = answered({}, contexts, roles={CTImageStorage: (0, 1)})
    assert [cx.result for cx in scp_only.contexts] == [1, 0]  # user rejection: no role left
    assert scp_only.roles == {}
    both = answered({}, contexts, roles={CTImageStorage: (1, 1)})
    assert [cx.result for cx in both.contexts] == [0, 0]
    assert both.roles == {CTImageStorage: (1, 0)}  # the requestor is SCU; SCP refused
