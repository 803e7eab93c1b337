"""docs/conformance.md is rendered from the negotiation tables, the configuration defaults and
the TLS profile (tests/test_generated_docs.py keeps it up to date); these check the tables
themselves."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from station.config import ListenConfig
from station.conformance import REJECTIONS, sop_classes, transfer_syntaxes
from station.dicom.pdu import Association, PresentationContext
from station.dicom.tls import BCP195_CIPHERS
from station.ops.metrics import ASSOCIATION_REJECT_REASONS
from station.receive.negotiation import Policy

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def test_every_listed_sop_class_and_transfer_syntax_is_accepted_by_the_scp() -> None:
    """The tables are not just printed: the SCP's policy accepts each row (and the query
    SOP class, not listed, is refused)."""
    policy = Policy("STATION", ListenConfig.model_validate({}))
    classes = [uid for _name, uid in sop_classes()] + [StudyRootQueryRetrieveInformationModelFind]
    syntaxes = [uid for _name, uid in transfer_syntaxes()]
    contexts = [
        PresentationContext(2 * i + 1, uid, [ExplicitVRLittleEndian])
        for i, uid in enumerate(classes)
    ]
    contexts += [PresentationContext(999, CTImageStorage, [ts]) for ts in syntaxes]
    answer = policy.answer(Association("STATION", "SCU", contexts), 0)
    results = [cx.result for cx in answer.contexts]
    assert results == [0] * (len(classes) - 1) + [3] + [0] * len(syntaxes)
    assert len(classes) > 150 and len(syntaxes) == len(
        ListenConfig.model_validate({}).transfer_syntaxes
    )
    text = DOC.read_text()
    assert all(f"| {uid} |" in text for uid in classes[:-1] + syntaxes)


def test_every_rejection_reason_and_cipher_is_documented() -> None:
    assert set(REJECTIONS) == set(ASSOCIATION_REJECT_REASONS)
    text = DOC.read_text()
    assert all(f"| {reason} |" in text for reason in ASSOCIATION_REJECT_REASONS)
    assert all(f"`{cipher}`" in text for cipher in BCP195_CIPHERS)
