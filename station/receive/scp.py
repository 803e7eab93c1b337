"""The C-STORE SCP: makes each received instance durable, then answers, and nothing more.

pynetdicom streams each incoming data set into a file under the spool's ``tmp`` folder
(chunked receive: memory stays flat, no decode). The handler reads the UIDs from that file
(headers only), moves it into the spool, fsyncs, journals it and only then answers
0x0000. Failures get their own status: 0xA700 when the disk is short, 0xC210 when the data
set cannot be understood (not DICOM, a missing or invalid UID), 0xA900 when the data set's
SOP Instance UID differs from the command's. Series logic, hooks and sending happen
elsewhere, so the sending modality is never held up by them.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from station import tuning
from station.config import ListenConfig
from station.errors import RejectedInstance
from station.logs import series_fields
from station.receive.intake import Intake, Origin
from station.spool import DATASET_MISMATCH, identify

log = logging.getLogger(__name__)


class StoreSCP:
    def __init__(
        self,
        ae_title: str,
        listen: ListenConfig,
        intake: Intake,
    ) -> None:
        self.ae_title = ae_title
        self.listen = listen
        self.intake = intake
        self.metrics = intake.metrics
        self.server = None
        self.port = listen.port
        self._active: set[int] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        # pynetdicom writes incoming data sets to tempfile's default folder; put that on
        # the spool's file system so the handler can move the file into place atomically.
        tuning.configure()
        tempfile.tempdir = str(self.intake.spool.tmp)
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.listen.max_associations
        ae.maximum_pdu_size = self.listen.max_pdu_bytes
        ae.require_calling_aet = list(self.listen.allowed_calling_aes)
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        # A router must take what the modality sends: private and not yet known storage SOP
        # classes too, in whichever transfer syntax the sender prefers (it is stored as it
        # comes). Other services (Verification) are negotiated as usual.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        ae.add_supported_context(Verification)
        handlers = [
            *tuning.HANDLERS,
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.ae = ae
        self.server = ae.start_server(
            (self.listen.host, self.listen.port), block=False, evt_handlers=handlers
        )
        self.port = self.server.server_address[1]

    def stop(self, drain_seconds: float = 20) -> None:
        """Take no new associations; let those in progress finish, then abort the rest."""
        if self.server is None:
            return
        self.server.shutdown()
        deadline = time.monotonic() + drain_seconds
        while self._established() and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self._established():
            log.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        self.server = None

    def _established(self) -> list[Association]:
        """The associations in progress. A connection that never became one (a port probe)
        holds no instance; pynetdicom keeps its thread until the ACSE timeout (30 s)."""
        assert self.server is not None
        return [a for a in self.server.active_associations if a.is_established]

    # --- association bookkeeping -------------------------------------------------------

    def _on_accepted(self, event: Event) -> None:
        with self._lock:
            self._active.add(id(event.assoc))
            self.metrics.associations_active.set(len(self._active))

    def _on_closed(self, event: Event) -> None:
        with self._lock:
            self._active.discard(id(event.assoc))
            self.metrics.associations_active.set(len(self._active))

    def _on_rejected(self, event: Event) -> None:
        requestor = event.assoc.requestor
        log.warning(
            "rejected association from %r at %s:%s (not in listen.allowed_calling_aes or "
            "too many associations)",
            requestor.ae_title,
            requestor.address,
            requestor.port,
        )

    # --- C-STORE ----------------------------------------------------------------------

    def _on_store(self, event: Event) -> int:
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip()
        called = event.assoc.acceptor.ae_title.strip()
        peer = f"{requestor.address}:{requestor.port}"
        incoming = Path(event.dataset_path)
        fields = {"calling_ae": calling}  # with the UIDs once they are read, for the log
        try:
            header = identify(incoming)
            fields = series_fields(header.study_uid, header.series_uid, calling)
            commanded = str(event.request.AffectedSOPInstanceUID or "")
            if commanded and commanded != header.sop_uid:
                raise RejectedInstance(
                    DATASET_MISMATCH,
                    "uid_mismatch",
                    f"data set SOP Instance UID {header.sop_uid} differs from the C-STORE "
                    f"request's {commanded}",
                )
            self.intake.take(incoming, header, Origin(calling, called, peer, "scp"))
        except RejectedInstance as exc:
            self.metrics.instances_rejected.labels(exc.reason).inc()
            log.warning(
                "refused instance from %s (%s) with 0x%04X: %s",
                calling,
                peer,
                exc.status,
                exc,
                extra=fields,
            )
            return exc.status
        except OSError as exc:
            reason = "disk_full" if exc.errno == 28 else "internal"
            self.metrics.instances_rejected.labels(reason).inc()
            log.error("cannot store instance from %s (%s): %s", calling, peer, exc, extra=fields)
            return 0xA700
        except Exception:
            self.metrics.instances_rejected.labels("internal").inc()
            log.exception("failed to store an instance from %s (%s)", calling, peer, extra=fields)
            return 0xA700
        return 0x0000
