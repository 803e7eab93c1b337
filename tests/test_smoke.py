import pytest
from conftest import VALID, dicom_destination, needs_corpus, storescu, wait_for

pytestmark = pytest.mark.e2e


@needs_corpus
def test_storescu_to_station_to_storescp(pacs, start_station):
    station = start_station({"destinations": {"pacs": dicom_destination(pacs)}})
    result = storescu(station.port, [VALID / "CT_small.dcm"])
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(pacs.files()) == 1, message="the instance at storescp")
    assert (
        station.metric("station_instances_received_total", source="scp", calling_ae="STORESCU") == 1
    )
