"""All configuration in one typed place: environment variables ``PROGEMU_*`` plus an optional TOML file.

Precedence, highest first: explicit values (e.g. CLI flags), environment
variables, the file named by ``PROGEMU_CONFIG``, then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_io.peers import DicomPeer, check_ae_title
from inference.hypothesis import MAX_HYPOTHESIS_CHARS
from inference.loading import EngineOptions
from inference.sampler import SamplerSettings
from plugin.dicomweb import PREFIX as DICOMWEB_PREFIX
from plugin.dicomweb import DicomWebTarget
from plugin.routing import RoutingRule

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL = ASSETS / "demo-model"
DEMO_PRIOR = ASSETS / "demo_prior.dcm"


def _split(value: object) -> object:
    """Lists from the environment as ``a,b,c`` (JSON lists work too)."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            import json

            return json.loads(stripped)
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return value


def _peer(value: object) -> object:
    return DicomPeer.parse(value) if isinstance(value, str) else value


def _destination(value: object) -> object:
    if isinstance(value, str) and value.strip().startswith(DICOMWEB_PREFIX):
        return DicomWebTarget.parse(value.strip())
    return _peer(value)


Peer = Annotated[DicomPeer, BeforeValidator(_peer)]
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split)]


class Settings(BaseSettings):
    """Settings of every progemu command and service."""

    model_config = SettingsConfigDict(env_prefix="PROGEMU_", extra="forbid")

    model_path: Path = Field(DEMO_MODEL, description="ProgEmu checkpoint directory, Hugging Face format "
                             "(default: the shipped demo model)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
    engine: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="generation engine; auto takes ONNX when an export sits next to the checkpoint")
    onnx_precision: Literal["fp32", "fp16"] = Field("fp32", description="which exported graphs the ONNX engine runs")
    onnx_providers: tuple[str, ...] = Field(
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        description="onnxruntime execution providers, in order of preference")
    onnx_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads on the CPU (0 = its default): "
                              "small models decode faster on one thread; raise it for large models")
    max_image_pixels: int = Field(50_000_000, gt=0, description="largest prior accepted (rows x columns)")
    max_hypothesis_chars: int = Field(MAX_HYPOTHESIS_CHARS, gt=0, description="longest hypothesis accepted")
    # The defaults are SamplerSettings' own (inference/sampler.py, tuned for the shipped demo model).
    seed: int = Field(SamplerSettings.seed, ge=0, description="sampling seed (same seed, same output)")
    cfg_scale: float = Field(SamplerSettings.cfg_scale, ge=0.0,
                             description="classifier-free guidance scale (1 = off)")
    top_k: int = Field(SamplerSettings.top_k, ge=0, description="top-k sampling (0 = off)")
    top_p: float = Field(SamplerSettings.top_p, gt=0.0, le=1.0, description="nucleus sampling threshold")
    temperature: float = Field(SamplerSettings.temperature, ge=0.0, description="sampling temperature (0 = greedy)")
    composition: Literal["residual", "decoded"] = Field(
        "residual", description="residual: the prior plus the model's change (keeps the patient's pixels and full "
        "resolution outside the change); decoded: the VQ decoder's image as it is")
    gate_body_parts: CommaList = Field(("CHEST", "THORAX", "LUNG"), description="BodyPartExamined values of a "
                                       "prior the model accepts (a prior without one is accepted too)")
    gate_view_positions: CommaList = Field(("PA", "AP"), description="ViewPosition values of a prior the model "
                                           "accepts (a prior without one is accepted too)")
    fhir_version: Literal["R5", "R4B"] = Field("R5", description="FHIR release of the output Bundle")
    pdf_report: bool = Field(True, description="also write and deliver the report as a DICOM Encapsulated PDF "
                             "(shown by OHIF, Orthanc Explorer 2 and most PACS; searchable text)")

    # --- the DICOM node: progemu serve / listen / worker -------------------------------------------
    data_dir: Path = Field(Path("progemu-data"), description="spool, results, job store (SQLite by default)")
    database_url: str | None = Field(None, description="job store, an SQLAlchemy URL (default: SQLite in data_dir; "
                                     "postgresql://user:pass@host/db for PostgreSQL)")
    broker_url: str | None = Field(None, description="Celery broker, redis:// or amqp:// (default: embedded "
                                   "in `progemu serve`, no broker daemon)")
    broker_visibility_timeout: int = Field(3600, gt=0, description="seconds before Redis redelivers an "
                                           "unacknowledged task (a worker that vanished); longer than any job")
    worker_queues: CommaList = Field(("gpu", "io"), description="queues `progemu worker` consumes: gpu "
                                     "(generation), io (delivery)")
    worker_concurrency: int = Field(1, ge=1, description="worker processes of `progemu worker`; each loads the "
                                    "model once")
    task_time_limit: int = Field(1800, gt=0, description="hard time limit of one generation, seconds")
    task_retries: int = Field(3, ge=0, description="retries of a task after a transient failure")
    metrics_port: int = Field(0, ge=0, lt=65536, description="port of `progemu worker`'s Prometheus metrics "
                              "(0: off); the node serves them at /metrics on its API port")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line, with "
                                                "the job id and request id where known")
    node_url: str | None = Field(None, description="a generation worker on another host: the node's API URL, "
                                 "from which it fetches priors and to which it uploads results (none: it works in "
                                 "the node's data_dir on this host)")
    node_token: SecretStr | None = Field(None, description="that worker's token at the node (a client with the "
                                         "worker scope)")
    result_max_bytes: int = Field(2**30, gt=0, description="largest result file a worker may upload to the node")

    ae_title: str = Field("PROGEMU", description="our AE title")
    bind_host: str = Field("127.0.0.1", description="interface the listener and the API bind to "
                           "(0.0.0.0 in a container)")
    dicom_port: int = Field(11112, ge=0, lt=65536, description="DICOM port of the listener")
    http_port: int = Field(8080, ge=0, lt=65536, description="REST API port")
    peers: Annotated[tuple[Peer, ...], NoDecode, BeforeValidator(_split)] = Field(
        (), description="AEs allowed to associate, as AET@HOST:PORT; each may only call from its host, and "
        "studies it sends are returned to it unless a destination is set")
    tls_cert: Path | None = Field(None, description="PEM certificate: turns on DICOM TLS for the listener")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_ca: Path | None = Field(None, description="PEM CA bundle: when set, callers must present a certificate")
    max_associations: int = Field(8, ge=1, description="concurrent associations the listener accepts")
    max_pdu_bytes: int = Field(262_144, ge=0, description="largest PDU we receive (0 = unlimited)")
    spool_max_bytes: int = Field(50 * 2**30, gt=0, description="the listener refuses instances beyond this")
    acse_timeout: float = Field(10.0, gt=0, description="seconds a caller may take to request an association "
                                "or answer one; idle connections are dropped after this")
    network_timeout: float = Field(60.0, gt=0, description="seconds an association may stay silent")
    max_pending_per_host: int = Field(4, ge=1, description="connections one address may hold open before its "
                                      "association is accepted")
    fhir_allow_http: bool = Field(False, description="allow a plain-http FHIR URL (test servers only: the token "
                                  "and the results would travel in clear)")
    outbound_tls: bool = Field(False, description="C-STORE and C-MOVE to peers over TLS, with tls_cert/tls_key "
                               "as our client certificate and tls_ca to verify the peer")
    spool_retention_hours: float = Field(24.0, gt=0, description="a spooled study nobody uses is removed after "
                                         "this (studies go as soon as their jobs end)")
    results_retention_hours: float = Field(168.0, gt=0, description="results not yet delivered are removed "
                                           "after this (delivered results go at once)")
    receiving_timeout_minutes: float = Field(60.0, gt=0, description="a job whose study has not arrived after "
                                             "this fails")
    disk_high_water: float = Field(0.9, gt=0, le=1, description="share of the data disk in use that triggers "
                                   "an emergency clean of the oldest spooled studies and undelivered results")
    sweep_interval_seconds: float = Field(300.0, gt=0, description="how often retention runs")
    audit_syslog: str | None = Field(None, description="also send the audit trail as DICOM audit messages "
                                     "(PS3.15 A.5) over syslog, RFC 5424: udp://host:port or tcp://host:port")
    study_quiet_seconds: float = Field(10.0, ge=0, description="a study is complete after this long without "
                                       "a new instance (or once the series a request named are in)")

    pacs_url: str | None = Field(None, description="Orthanc REST URL of the PACS that holds the priors")
    pacs_username: str | None = None
    pacs_password: SecretStr | None = None
    pacs_node_name: str | None = Field(None, description="the name the PACS knows this node by "
                                       "(Orthanc's DicomModalities key; default: our AE title)")
    pacs_dicom: Peer | None = Field(None, description="for a PACS without Orthanc's REST API: AET@HOST:PORT "
                                    "to C-MOVE studies from")
    pacs_dicomweb_url: str | None = Field(None, description="for a PACS reached by DICOMweb: its base URL "
                                          "(https://host/dicom-web), to find studies by QIDO-RS and fetch them by "
                                          "WADO-RS (used when neither pacs_url nor pacs_dicom is set)")
    dicomweb_username: str | None = Field(None, description="HTTP Basic user at the DICOMweb PACS")
    dicomweb_password: SecretStr | None = Field(None, description="HTTP Basic password at the DICOMweb PACS")
    dicomweb_token: SecretStr | None = Field(None, description="bearer token at the DICOMweb PACS (instead of "
                                             "user and password)")
    dicomweb_allow_http: bool = Field(False, description="allow plain-http DICOMweb URLs (test servers only: "
                                      "images and credentials would travel in clear)")
    destination: Annotated[DicomPeer | DicomWebTarget, BeforeValidator(_destination)] | None = Field(
        None, description="where results go: AET@HOST:PORT by C-STORE, or dicomweb+https://host/dicom-web by "
        "STOW-RS (default: the peer that sent the study)")
    fhir_url: str | None = Field(None, description="FHIR base URL for the results Bundle (none: no FHIR delivery)")
    fhir_token: SecretStr | None = Field(None, description="bearer token for the FHIR server")
    delivery_retry_seconds: float = Field(30.0, gt=0, description="first retry delay of a failed delivery; "
                                          "doubles up to an hour")
    delivery_give_up_hours: float = Field(72.0, gt=0, description="a delivery still failing after this is "
                                          "marked failed")
    api_token: SecretStr | None = Field(None, description="bearer token of the REST API (required to serve it)")
    api_max_body_bytes: int = Field(65_536, gt=0, description="largest request body the API reads")
    max_queued_jobs: int = Field(200, ge=1, description="jobs waiting or running at once, all clients together")
    max_jobs_per_client: int = Field(20, ge=1, description="jobs one API client may have waiting or running")
    routes: tuple[RoutingRule, ...] = Field((), description="preset hypotheses for pushed studies")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PROGEMU_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    def prepare_data_dir(self) -> Path:
        """Create the data directory readable by its owner only: it holds patients' images and results."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.data_dir

    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # psycopg 3 is the driver we ship; SQLAlchemy's bare postgresql:// means psycopg2
            return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith(
                "postgresql://") else url
        return f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"

    def sampler(self, **overrides: object) -> SamplerSettings:
        """The configured sampler settings, with a request's overrides where given (None: not given)."""
        values: dict[str, object] = {"seed": self.seed, "cfg_scale": self.cfg_scale, "top_k": self.top_k,
                                     "top_p": self.top_p, "temperature": self.temperature}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return SamplerSettings(**values)  # type: ignore[arg-type]

    def engine_options(self) -> EngineOptions:
        return EngineOptions(engine=self.engine, device=self.resolved_device(), onnx_precision=self.onnx_precision,
                             onnx_providers=self.onnx_providers, onnx_threads=self.onnx_threads)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
