"""Ask the PACS to send a study to us: Orthanc through its REST API, any other PACS through C-MOVE
(over TLS with ``outbound_tls``); or fetch it ourselves from a DICOMweb PACS (QIDO-RS, WADO-RS) into the spool
and hand it over as the listener does with a study it received."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dicomweb_client import DICOMwebClient
from orthanc_api_client import OrthancApiClient
from orthanc_api_client.exceptions import OrthancApiException, ResourceNotFound

from dicom_io.completion import StudyArrival
from dicom_io.peers import DicomPeer
from dicom_io.reader import RADIOGRAPHY, SECONDARY_CAPTURE
from dicom_io.records import MANUFACTURER
from dicom_io.sender import DicomSendError, echo, move_study
from dicom_io.spool import Spool
from plugin import dicomweb
from plugin.config import Settings
from plugin.delivery import outbound_tls
from plugin.errors import PacsNotConfigured, PermanentError, ProgemuError, RetrievalError, StudyNotFound
from plugin.metrics import RETRIEVALS

log = logging.getLogger(__name__)

SOURCE_MODALITIES = {"CR", "DX", "OT"}
DICOMWEB_ORIGIN = "DICOMweb"
"""The calling AE title a study fetched by WADO-RS is recorded with (no AE sent it)."""


class Retriever:
    """Finds studies in the PACS and has it send their source series (never our own outputs) to this node."""

    def __init__(self, config: Settings, *, spool: Spool | None = None,
                 hand_over: Callable[[StudyArrival], None] | None = None) -> None:
        """``spool`` and ``hand_over``: where a study fetched by WADO-RS goes, and who is told it is complete (the
        node's; without them a DICOMweb PACS can be searched but not retrieved from)."""
        self.config = config
        self._spool, self._hand_over = spool, hand_over
        self.node_name = config.pacs_node_name or config.ae_title
        self._tls = outbound_tls(config)  # made once, at the node's start: certificates that cannot load stop it
        self._orthanc: OrthancApiClient | None = None
        if config.pacs_url:
            password = config.pacs_password.get_secret_value() if config.pacs_password else None
            self._orthanc = OrthancApiClient(config.pacs_url, user=config.pacs_username, pwd=password)
        # checked at the node's start too: a plain-http URL not allowed stops it
        self._dicomweb = dicomweb.client(config.pacs_dicomweb_url, config) if config.pacs_dicomweb_url else None

    @property
    def configured(self) -> bool:
        return self._orthanc is not None or self.config.pacs_dicom is not None or self._dicomweb is not None

    def reachable(self) -> bool | None:
        """Whether the PACS answers now (Orthanc: GET /system; otherwise C-ECHO), None when none is configured."""
        if self._orthanc is not None:
            return self._orthanc.is_alive(timeout=1)
        if self.config.pacs_dicom is not None:
            try:
                echo(self.config.pacs_dicom, calling_ae_title=self.config.ae_title, timeout=2, tls=self._tls)
            except DicomSendError:
                return False
            return True
        if self._dicomweb is not None:
            try:
                with dicomweb.translated("QIDO-RS", RetrievalError):
                    self._dicomweb.search_for_studies(limit=1)
            except ProgemuError:  # down, or refusing us (401): not usable either way
                return False
            return True
        return None

    def exists(self, study_uid: str) -> bool | None:
        """True/False where the PACS can be asked (Orthanc, DICOMweb), None where it cannot (C-MOVE only)."""
        if self._dicomweb is not None and self._orthanc is None:
            try:
                with dicomweb.translated("QIDO-RS", RetrievalError):
                    return bool(self._dicomweb.search_for_studies(search_filters={"StudyInstanceUID": study_uid},
                                                                  limit=1))
            except PermanentError as exc:  # refused (401, 403): to the caller, a PACS that cannot be asked
                raise RetrievalError(str(exc)) from None
        if self._orthanc is None:
            return None
        try:
            return self._orthanc.studies.lookup(study_uid) is not None
        except (OrthancApiException, OSError) as exc:
            raise RetrievalError(f"the PACS at {self.config.pacs_url} did not answer ({type(exc).__name__})") from None

    def request(self, study_uid: str, series_uids: Sequence[str] = ()) -> list[str]:
        """Have the PACS send the study's source series; return the series UIDs asked for."""
        if self._orthanc is not None:
            return self._from_orthanc(self._orthanc, study_uid, series_uids)
        if self.config.pacs_dicom is not None:
            return self._by_move(self.config.pacs_dicom, study_uid, series_uids)
        if self._dicomweb is not None:
            return self._by_wado(self._dicomweb, study_uid, series_uids)
        raise PacsNotConfigured("the study has not been received and no PACS is configured to retrieve it from "
                                "(set pacs_url, pacs_dicom or pacs_dicomweb_url)")

    @RETRIEVALS.attempt("orthanc")
    def _from_orthanc(self, client: OrthancApiClient, study_uid: str, series_uids: Sequence[str]) -> list[str]:
        try:
            study_id = client.studies.lookup(study_uid)
            if study_id is None:
                raise StudyNotFound("the study is not in the PACS")
            chosen: dict[str, str] = {}
            for series_id in client.studies.get_series_ids(study_id):
                tags = client.series.get(series_id).main_dicom_tags
                uid = tags.get("SeriesInstanceUID")
                if series_uids and uid not in series_uids:
                    continue
                if not series_uids and (tags.get("Modality") not in SOURCE_MODALITIES
                                        or tags.get("Manufacturer") == MANUFACTURER):
                    continue
                chosen[series_id] = uid
            if not series_uids:
                chosen = {sid: uid for sid, uid in chosen.items() if self._is_image_series(client, sid)}
            if not chosen:
                raise StudyNotFound("the study holds no CR, DX or Secondary Capture series to use as the prior")
            job = client.modalities.send_async(self.node_name, list(chosen))
            log.info("asked the PACS to send %d series (Orthanc job %s)", len(chosen), job.orthanc_id)
            return list(chosen.values())
        except ResourceNotFound:
            raise StudyNotFound("the study is not in the PACS") from None
        except (OrthancApiException, OSError) as exc:
            raise RetrievalError(f"the PACS did not send the study ({type(exc).__name__})") from None

    @staticmethod
    def _is_image_series(client: OrthancApiClient, series_id: str) -> bool:
        """A series of our own outputs or of SRs is not a prior, whatever its Modality says."""
        instance = client.series.get_instances_ids(series_id)[0]
        sop_class = client.instances.get_tags(instance).get("SOPClassUID")
        return sop_class in RADIOGRAPHY + SECONDARY_CAPTURE

    @RETRIEVALS.attempt("dicom")
    def _by_move(self, pacs: DicomPeer, study_uid: str, series_uids: Sequence[str]) -> list[str]:
        try:
            move_study(pacs, study_uid, destination_ae_title=self.config.ae_title,
                       calling_ae_title=self.config.ae_title, series_uids=series_uids, tls=self._tls)
        except DicomSendError as exc:
            raise RetrievalError(str(exc)) from None
        return list(series_uids)

    @RETRIEVALS.attempt("dicomweb")
    def _by_wado(self, client: DICOMwebClient, study_uid: str, series_uids: Sequence[str]) -> list[str]:
        """Find the series by QIDO-RS, fetch their instances by WADO-RS into the spool, and hand the study over."""
        if self._spool is None or self._hand_over is None:
            raise PacsNotConfigured("this process has no spool to fetch a study by DICOMweb into")
        with dicomweb.translated("QIDO-RS", RetrievalError):
            chosen = self._dicomweb_series(client, study_uid, series_uids)
        if not chosen:
            raise StudyNotFound("the study holds no CR, DX or Secondary Capture series to use as the prior")
        arrival = StudyArrival(study_uid, called_ae_title=self.config.ae_title, calling_ae_title=DICOMWEB_ORIGIN)
        for series_uid in chosen:
            with dicomweb.translated("WADO-RS", RetrievalError):
                instances = client.retrieve_series(study_uid, series_uid, media_types=dicomweb.ANY_TRANSFER_SYNTAX)
            for ds in instances:
                if ds.get("StudyInstanceUID") != study_uid or ds.get("SeriesInstanceUID") != series_uid:
                    raise RetrievalError("WADO-RS: the DICOMweb server sent an instance of another series")
                self._spool.write(study_uid, series_uid, str(ds.SOPInstanceUID), dicomweb.encoded(ds))
                arrival.instances += 1
                arrival.modalities.add(str(ds.get("Modality", "")))
            arrival.series.add(series_uid)
        log.info("fetched %d instance(s) in %d series by WADO-RS", arrival.instances, len(arrival.series))
        self._hand_over(arrival)
        return chosen

    @staticmethod
    def _dicomweb_series(client: DICOMwebClient, study_uid: str, series_uids: Sequence[str]) -> list[str]:
        """The series asked for, else the study's image series that are not our own outputs (as from Orthanc)."""
        chosen = []
        for series in client.search_for_series(study_uid, fields=["Manufacturer"]):
            uid = dicomweb.value_of(series, "SeriesInstanceUID")
            if uid is None or (series_uids and uid not in series_uids):
                continue
            if not series_uids:
                if (dicomweb.value_of(series, "Modality") not in SOURCE_MODALITIES
                        or dicomweb.value_of(series, "Manufacturer") == MANUFACTURER):
                    continue
                first = client.search_for_instances(study_uid, uid, limit=1)
                if not first or dicomweb.value_of(first[0], "SOPClassUID") not in RADIOGRAPHY + SECONDARY_CAPTURE:
                    continue
            chosen.append(uid)
        return chosen
