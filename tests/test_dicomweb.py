"""DICOMweb against Orthanc's own DICOMweb plugin (Debian's orthanc-dicomweb): delivery by STOW-RS, retrieval by
QIDO-RS and WADO-RS into the spool, HTTP Basic auth, the transient/permanent split, and a node whose PACS is
reached only by DICOMweb taking a request end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_io.completion import StudyArrival
from dicom_io.records import MANUFACTURER
from dicom_io.spool import Spool
from plugin.config import Settings
from plugin.delivery import DICOMWEB, check_settings, deliver
from plugin.errors import DeliveryError, PermanentError, StudyNotFound
from plugin.results import AlgorithmIdentity, DicomOutput, JobResults, OutputKind
from plugin.retrieval import DICOMWEB_ORIGIN, Retriever
from tests.support.net import free_port
from tests.support.node_server import NodeServer
from tests.support.orthanc_server import PASSWORD, USER, OrthancServer
from tests.support.studies import fresh_prior

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path_factory.mktemp("dicomweb") / "orthanc", dicomweb=True).start()
    try:
        yield server
    finally:
        server.stop()


def _config(tmp_path: Path, **values: object) -> Settings:
    """Orthanc's test server speaks plain http: allowed here, with its Basic credentials."""
    return Settings(**{"data_dir": tmp_path, "dicomweb_allow_http": True, "dicomweb_username": USER,
                       "dicomweb_password": PASSWORD, **values})


def _results(tmp_path: Path, study: pydicom.Dataset) -> JobResults:
    """Two DICOM outputs of ``study`` (new series), as a job's results name them."""
    outputs, files = [], {}
    for kind in (OutputKind.SC, OutputKind.REPORT_PAGE):
        ds = fresh_prior(tmp_path / f"{kind}.dcm", StudyInstanceUID=study.StudyInstanceUID,
                         PatientID=study.PatientID, Manufacturer=MANUFACTURER)
        outputs.append(DicomOutput(kind=kind, series_instance_uid=ds.SeriesInstanceUID,
                                   sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID))
        files[kind.value] = str(tmp_path / f"{kind}.dcm")
    return JobResults(outputs=tuple(outputs), interpretation="i", settings={}, files=files,
                      algorithm=AlgorithmIdentity(name="ProgEmu", version="t", checkpoint_sha256="0" * 64))


def test_stow_rs_delivers_every_output_into_the_pacs(orthanc: OrthancServer, tmp_path: Path) -> None:
    study = fresh_prior(tmp_path / "prior.dcm")
    results = _results(tmp_path, study)
    deliver(DICOMWEB, f"dicomweb+{orthanc.dicomweb_url}", results, _config(tmp_path))
    for output in results.outputs:
        assert orthanc.client.instances.lookup(output.sop_instance_uid) is not None
    assert len(orthanc.series_of(study.StudyInstanceUID)) == 2


def test_a_refusal_is_permanent_a_server_away_transient_and_neither_names_the_address(
        orthanc: OrthancServer, tmp_path: Path) -> None:
    results = _results(tmp_path, fresh_prior(tmp_path / "prior.dcm"))
    wrong = _config(tmp_path, dicomweb_password="not-the-password")
    with pytest.raises(PermanentError, match="answered 401") as refused:
        deliver(DICOMWEB, f"dicomweb+{orthanc.dicomweb_url}", results, wrong)
    away = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DeliveryError, match="did not answer") as down:
        deliver(DICOMWEB, f"dicomweb+{away}", results, _config(tmp_path))
    for message in (str(refused.value), str(down.value)):
        assert "127.0.0.1" not in message and "dicom-web" not in message
    assert orthanc.client.instances.lookup(results.outputs[0].sop_instance_uid) is None


def test_plain_http_is_refused_at_start_unless_allowed(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(PermanentError, match="plain http"):
        check_settings(Settings(data_dir=tmp_path, destination=f"dicomweb+{url}"))
    with pytest.raises(PermanentError, match="plain http"):
        Retriever(Settings(data_dir=tmp_path, pacs_dicomweb_url=url))
    check_settings(Settings(data_dir=tmp_path, destination=f"dicomweb+{url}", dicomweb_allow_http=True))


def test_qido_and_wado_fetch_the_image_series_into_the_spool_and_hand_the_study_over(
        orthanc: OrthancServer, tmp_path: Path) -> None:
    prior = fresh_prior(tmp_path / "prior.dcm")
    ours = fresh_prior(tmp_path / "ours.dcm", StudyInstanceUID=prior.StudyInstanceUID, Manufacturer=MANUFACTURER)
    for name in ("prior.dcm", "ours.dcm"):
        orthanc.upload(tmp_path / name)
    spool, arrivals = Spool(tmp_path / "spool", 2**30), []
    retriever = Retriever(_config(tmp_path, pacs_dicomweb_url=orthanc.dicomweb_url), spool=spool,
                          hand_over=arrivals.append)
    assert retriever.configured and retriever.reachable()
    assert retriever.exists(prior.StudyInstanceUID) and retriever.exists(generate_uid()) is False

    assert retriever.request(prior.StudyInstanceUID) == [prior.SeriesInstanceUID]  # never our own outputs
    [spooled] = spool.instances(prior.StudyInstanceUID)
    assert spooled.name == f"{prior.SOPInstanceUID}.dcm"
    fetched = pydicom.dcmread(spooled)
    assert fetched.PatientID == prior.PatientID and fetched.PixelData == prior.PixelData
    assert arrivals == [StudyArrival(prior.StudyInstanceUID, called_ae_title="PROGEMU",
                                     calling_ae_title=DICOMWEB_ORIGIN, series={prior.SeriesInstanceUID},
                                     instances=1, modalities={prior.Modality})]
    assert ours.SeriesInstanceUID not in {p.parent.name for p in spool.instances(prior.StudyInstanceUID)}
    with pytest.raises(StudyNotFound):
        retriever.request(generate_uid())


def test_a_pacs_reached_only_by_dicomweb_serves_a_request_end_to_end(orthanc: OrthancServer,
                                                                    tmp_path: Path) -> None:
    node = NodeServer(tmp_path / "node", env={
        "PROGEMU_PACS_DICOMWEB_URL": orthanc.dicomweb_url, "PROGEMU_DESTINATION": f"dicomweb+{orthanc.dicomweb_url}",
        "PROGEMU_DICOMWEB_USERNAME": USER, "PROGEMU_DICOMWEB_PASSWORD": PASSWORD,
        "PROGEMU_DICOMWEB_ALLOW_HTTP": "true"})  # no peers, no Orthanc REST, no C-MOVE
    prior = fresh_prior(tmp_path / "prior.dcm")
    orthanc.upload(tmp_path / "prior.dcm")
    try:
        node.start()
        response = node.post({"study_instance_uid": prior.StudyInstanceUID, "hypothesis": "The effusion worsens."})
        assert response.status_code == 201, response.text
        job = node.wait_until(response.json()["id"], {"done", "failed"})
        assert job["state"] == "done", (job, node.log_tail())
        assert [(d["kind"], d["state"]) for d in job["deliveries"]] == [("dicomweb", "done")]
        assert "127.0.0.1" not in job["deliveries"][0]["target"]
        for output in job["results"]["outputs"]:
            assert orthanc.client.instances.lookup(output["sop_instance_uid"]) is not None
        assert len(orthanc.series_of(prior.StudyInstanceUID)) == 1 + len(job["results"]["outputs"])
    finally:
        node.stop()
