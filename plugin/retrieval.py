"""Ask the PACS to send a study to us: Orthanc through its REST API, any other PACS through C-MOVE
(over TLS with ``outbound_tls``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from orthanc_api_client import OrthancApiClient
from orthanc_api_client.exceptions import OrthancApiException, ResourceNotFound

from dicom_io.peers import DicomPeer
from dicom_io.reader import RADIOGRAPHY, SECONDARY_CAPTURE
from dicom_io.records import MANUFACTURER
from dicom_io.sender import DicomSendError, echo, move_study
from plugin.config import Settings
from plugin.delivery import outbound_tls
from plugin.errors import PacsNotConfigured, RetrievalError, StudyNotFound
from plugin.metrics import RETRIEVALS

log = logging.getLogger(__name__)

SOURCE_MODALITIES = {"CR", "DX", "OT"}


class Retriever:
    """Finds studies in the PACS and has it send their source series (never our own outputs) to this node."""

    def __init__(self, config: Settings) -> None:
        self.config = config
        self.node_name = config.pacs_node_name or config.ae_title
        self._tls = outbound_tls(config)  # made once, at the node's start: certificates that cannot load stop it
        self._orthanc: OrthancApiClient | None = None
        if config.pacs_url:
            password = config.pacs_password.get_secret_value() if config.pacs_password else None
            self._orthanc = OrthancApiClient(config.pacs_url, user=config.pacs_username, pwd=password)

    @property
    def configured(self) -> bool:
        return self._orthanc is not None or self.config.pacs_dicom is not None

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
        return None

    def exists(self, study_uid: str) -> bool | None:
        """True/False where the PACS can be asked (Orthanc), None where it cannot (C-MOVE only)."""
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
        raise PacsNotConfigured("the study has not been received and no PACS is configured to retrieve it from "
                                "(set pacs_url or pacs_dicom)")

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
