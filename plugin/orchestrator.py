"""The node's use cases around one counterfactual job: submit, receive, generate, deliver.

The API, the listener's hand-over and the Celery tasks all call in here; the dispatcher
(Celery in production) decides where the next step runs. Each step reads only what the
previous step wrote: the job store and the spool. The node decides where a job's results go
(when it accepts the job, or its study arrives) and records it with the job; generation, which
may run on another host (:mod:`plugin.transfer`), never decides it again.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import pydicom

from dicom_io.completion import StudyArrival
from dicom_io.errors import DicomInputError
from dicom_io.spool import Spool, StudyOrigin, write_atomically
from dicom_io.study import choose_prior, is_own_output
from inference.errors import InferenceError
from inference.sampler import Deadline, SamplerSettings
from plugin.audit import AuditTrail
from plugin.config import Settings
from plugin.counterfactual import OUTPUT_NAMES, CounterfactualUseCase, load_use_case, write_outputs
from plugin.delivery import FHIR, deliver, destination_kind, retry_delay
from plugin.errors import PermanentError, PermanentJobError, TransientError
from plugin.jobs import NEEDS_STUDY, DeliveryState, JobState, JobStore, JobView, NewJob
from plugin.results import JobResults
from plugin.retention import Retention
from plugin.routing import matching_rules
from plugin.transfer import Superseded, transfer_for

if TYPE_CHECKING:
    from dicom_io.listener import AssociationAttempt, Listener

log = logging.getLogger(__name__)

DELIVERY_LEASE = dt.timedelta(minutes=10)
"""A delivery handed to a worker is not handed out again for this long (the attempt records its own retry)."""
RESULT_NAMES = frozenset(OUTPUT_NAMES.values())
"""The only file names a job's results directory takes."""


class Dispatcher(Protocol):
    """Where the next step of a job runs (Celery's gpu and io queues in the node)."""

    def generate(self, job_id: str) -> None: ...
    def deliver(self, delivery_id: int) -> None: ...
    def retrieve(self, job_id: str) -> None: ...


class Orchestrator:
    def __init__(self, config: Settings, dispatcher: Dispatcher) -> None:
        self.config = config
        self.dispatcher = dispatcher
        config.prepare_data_dir()
        self.audit = AuditTrail.from_settings(config)
        self.store = JobStore(config.resolved_database_url(), on_finished=self._finished)
        self.spool = Spool(config.data_dir / "spool", config.spool_max_bytes)
        self.results_dir = config.data_dir / "results"
        self.work_dir = config.data_dir / "work"
        """This worker's scratch space: a fetched prior and the outputs until they are handed over."""
        self.transfer = transfer_for(config, self)
        self.listener: Listener | None = None  # set by `progemu serve`/`listen`: the in-process listener, if any
        self.retention = Retention(config, self.store, self.spool, self.results_dir, receiving=self._receiving)
        from plugin.retrieval import Retriever

        # one PACS client per process, not one per request; a study fetched by WADO-RS is handed over as if the
        # listener had received it
        self.retriever = Retriever(config, spool=self.spool, hand_over=self.on_study_complete)
        self._use_case: CounterfactualUseCase | None = None
        self._use_case_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._undispatched: set[tuple[str, str | int]] = set()
        """Steps the queue refused (the broker was away): :meth:`redispatch` hands them over again."""
        self._undispatched_lock = threading.Lock()

    # --- the model, once per process --------------------------------------------------------------

    def use_case(self) -> CounterfactualUseCase:
        with self._use_case_lock:
            if self._use_case is None:
                from inference.model import quiet_transformers

                quiet_transformers()
                self._use_case = load_use_case(self.config)
                log.info("model loaded once for this process")
            return self._use_case

    # --- the queue --------------------------------------------------------------------------------

    def _dispatch(self, step: str, ident: str | int) -> None:
        """Hand one step to the queue; if the broker is away, keep it for :meth:`redispatch` instead of losing it
        (the job would otherwise wait in queued or receiving for ever)."""
        try:
            getattr(self.dispatcher, step)(ident)
        except Exception as exc:  # noqa: BLE001 - kombu's OperationalError, a refused connection, a timeout...
            log.warning("could not queue %s of %s (%s); trying again when the broker is back", step, ident,
                        type(exc).__name__)
            with self._undispatched_lock:
                self._undispatched.add((step, ident))

    def redispatch(self) -> int:
        """Queue again whatever the broker refused; return how many were handed over this time."""
        with self._undispatched_lock:
            pending, self._undispatched = self._undispatched, set()
        for step, ident in sorted(pending, key=str):
            self._dispatch(step, ident)
        with self._undispatched_lock:
            return len(pending - self._undispatched)

    # --- requests ---------------------------------------------------------------------------------

    def submit(self, request: NewJob) -> tuple[JobView, bool]:
        if request.destination is None and self.config.destination:
            request = replace(request, destination=str(self.config.destination))  # decided now, not at delivery
        if request.fhir_url is None and self.config.fhir_url:
            request = replace(request, fhir_url=self.config.fhir_url)
        job, created = self.store.submit(request)
        if created:
            client, _, user = (request.requester or "").partition(":")
            self.audit.job_requested(job.id, job.study_instance_uid, client=client or None, requester=user or None,
                                     source=request.source)
            self._start(job)
            job = self.store.require(job.id)
        return job, created

    def _receiving(self, study_uid: str) -> bool:
        return self.listener is not None and self.listener.tracker.receiving(study_uid)

    def _start(self, job: JobView) -> None:
        if self.spool.has_study(job.study_instance_uid) and not self._receiving(job.study_instance_uid):
            self._study_ready(job)
            return
        self.store.transition(job.id, JobState.RECEIVING, expect=[JobState.QUEUED])
        if job.series_instance_uids:
            self.expect(job.study_instance_uid, job.series_instance_uids)
        if self._receiving(job.study_instance_uid):
            return  # arriving right now: its completion hands the study to every job waiting for it
        self._dispatch("retrieve", job.id)

    def expect(self, study_uid: str, series_uids) -> None:
        if self.listener is not None and series_uids:
            self.listener.expect(study_uid, series_uids)

    def retrieve(self, job_id: str) -> None:
        """Have the PACS send the study; a PermanentError fails the job, a TransientError is retried by the caller."""
        job = self.store.get(job_id)
        if job is None or job.state != JobState.RECEIVING:
            return
        if self.spool.has_study(job.study_instance_uid) and not self._receiving(job.study_instance_uid):
            self._study_ready(job)  # it arrived meanwhile (pushed, or a retrieval retried)
            return
        series = self.retriever.request(job.study_instance_uid, job.series_instance_uids)
        self.expect(job.study_instance_uid, series)

    def fail(self, job_id: str, reason: str) -> None:
        """Fail a job that has not finished. The node records it: a worker on another host hands the failure over
        (:attr:`transfer`), so that the node's audit trail stays the one record; only when the node cannot be told
        does that worker fail the job in the job store itself, and its own audit log records it."""
        try:
            self.transfer.fail(job_id, reason)
        except TransientError as exc:
            log.warning("job %s: the node could not be told that it failed (%s); failing it from this worker, "
                        "whose own audit log records it", job_id, exc)
            self.record_failure(job_id, reason)

    def _study_ready(self, job: JobView) -> None:
        """The job's study is in the spool: fix where its results go, if its request did not (the configured
        destination, else the peer that sent the study), then generate."""
        if job.destination is None:
            destination = str(self.config.destination or "") or self._origin_peer(job.study_instance_uid)
            if destination:
                self.store.assign_destination(job.id, destination)
        self._dispatch("generate", job.id)

    def _origin_peer(self, study_uid: str) -> str | None:
        """The configured peer that sent the study (its first sender: the spool keeps no other's instances)."""
        origin = self.spool.origin(study_uid)
        if origin is not None:
            for peer in self.config.peers:
                if peer.ae_title == origin.calling_ae_title:
                    return str(peer)
        return None

    # --- the listener's hand-over -----------------------------------------------------------------

    def is_own_output(self, ds: pydicom.Dataset) -> bool:
        return is_own_output(ds) or self.store.is_output_series(str(ds.get("SeriesInstanceUID", "")))

    def on_association(self, attempt: AssociationAttempt) -> None:
        if attempt.accepted:
            self.audit.association_accepted(attempt.calling_ae_title, attempt.address)
        else:
            self.audit.association_refused(attempt.calling_ae_title, attempt.address, attempt.reason or "refused")

    def on_study_complete(self, arrival: StudyArrival) -> None:
        self.spool.record_origin(arrival.study_uid, StudyOrigin(calling_ae_title=arrival.calling_ae_title,
                                                                called_ae_title=arrival.called_ae_title))
        self.audit.study_received(arrival.study_uid, arrival.calling_ae_title, arrival.instances)
        waiting = 0
        for job in self.store.waiting_for(arrival.study_uid):
            self._study_ready(job)
            waiting += 1
        log.info("study complete: %d instance(s) in %d series; %d job(s) waiting", arrival.instances,
                 len(arrival.series), waiting)
        if waiting:
            return
        for rule in matching_rules(self.config.routes, arrival, lambda: self._prior_header(arrival.study_uid)):
            self.submit(NewJob(request_id=rule.request_id(arrival.study_uid), study_instance_uid=arrival.study_uid,
                               hypothesis=rule.hypothesis, sampler=self.default_sampler(), source=rule.source))

    def _prior_header(self, study_uid: str) -> pydicom.Dataset | None:
        try:
            return pydicom.dcmread(choose_prior(self.spool.instances(study_uid), skip=self.is_own_output),
                                   stop_before_pixels=True)
        except DicomInputError:
            return None

    def default_sampler(self, **overrides: object) -> dict:
        return asdict(self.config.sampler(**overrides))

    # --- generation (gpu queue) -------------------------------------------------------------------

    def generate(self, job_id: str, worker: str) -> None:
        """Run one job; PermanentJobError for input that can never work, other errors are transient.

        The prior comes, and the results go, through :attr:`transfer`: the node's disk here, or its internal API
        from another host. Scratch files are this attempt's own and never outlive it.
        """
        job = self.store.get(job_id)
        if job is None or job.state not in (JobState.QUEUED, JobState.RECEIVING, JobState.RUNNING):
            log.info("job %s is %s; nothing to generate", job_id, job.state if job else "unknown")
            return
        self.store.transition(job_id, JobState.RUNNING, expect=[JobState.QUEUED, JobState.RECEIVING,
                                                                JobState.RUNNING])
        attempt = self.store.count_attempt(job_id, worker)
        log.info("job %s running (attempt %d)", job_id, attempt)
        for stale in self.work_dir.glob(f"{job_id}-*"):  # an earlier attempt's, killed on this host
            shutil.rmtree(stale, ignore_errors=True)
        scratch = self.work_dir / f"{job_id}-{attempt}"
        try:
            try:
                prior = self.transfer.prior(job, scratch)
                use_case = self.use_case()
                with self._generate_lock:
                    # checked between tokens, so in every mode (a thread of `progemu serve` cannot be killed)
                    deadline = Deadline(self.config.task_time_limit)
                    outputs = use_case.run(prior, job.hypothesis, SamplerSettings(**job.sampler),
                                           allow_out_of_distribution=job.allow_out_of_distribution, cancel=deadline)
            except (DicomInputError, InferenceError) as exc:
                raise PermanentJobError(str(exc)) from None
            files = write_outputs(outputs, scratch / "results")
            results = outputs.job_results({kind: Path(path.name) for kind, path in files.items()})
            self.transfer.publish(job_id, attempt, files, results)
        except Superseded as exc:
            log.info("job %s: attempt %d stops: %s", job_id, attempt, exc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # --- what the node does for a generation worker (plugin.transfer.NodeSide) ---------------------

    def prior_path(self, job_id: str) -> Path:
        """The spooled image the job is to be generated from. LookupError: no such job; Superseded: it no longer
        needs one; DicomInputError: its study holds no usable image."""
        job = self.store.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state not in NEEDS_STUDY:
            raise Superseded(f"job {job_id} is {job.state}")
        return choose_prior(self.spool.instances(job.study_instance_uid), series_uids=job.series_instance_uids,
                            skip=self.is_own_output)

    def _running(self, job_id: str, attempt: int) -> JobView:
        job = self.store.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state != JobState.RUNNING or job.attempts != attempt:
            raise Superseded(f"job {job_id} is {job.state} at attempt {job.attempts}, not running attempt {attempt}")
        return job

    def store_result(self, job_id: str, attempt: int, name: str, write: Callable[[BinaryIO], object]) -> None:
        """Write one result file of a running attempt into the job's results directory, through a part file and a
        rename: a file half written is never seen, and a later attempt overwrites an earlier one's whole."""
        if name not in RESULT_NAMES:
            raise ValueError(f"{name!r} is not a result file (expected one of {', '.join(sorted(RESULT_NAMES))})")
        self._running(job_id, attempt)
        write_atomically(self.results_dir / job_id / name, write)

    def accept_results(self, job_id: str, attempt: int, results: JobResults) -> None:
        """Take a running attempt's results, whose files are in place: queue their deliveries to the targets fixed
        with the job, and release its study. A resent hand-over of results already taken is a no-op."""
        job = self.store.get(job_id)
        if job is not None and job.attempts == attempt and job.results is not None:
            return
        job = self._running(job_id, attempt)
        if not set(results.files.values()) <= RESULT_NAMES:
            raise ValueError("the results name files that are not result files")
        missing = sorted(name for name in results.files.values() if not (self.results_dir / job_id / name).is_file())
        if missing:
            raise ValueError(f"result files not uploaded: {', '.join(missing)}")
        deliveries = ([(destination_kind(job.destination), job.destination)] if job.destination else []) + (
            [(FHIR, job.fhir_url)] if job.fhir_url else [])
        if not self.store.finish_generation(job_id, attempt, results, deliveries):
            raise Superseded(f"job {job_id} moved on while its results were handed over")
        self.retention.release_study(job.study_instance_uid)
        if not deliveries:
            log.warning("job %s has no destination: its results stay in %s", job_id, self.results_dir / job_id)
        self.sweep_outbox(job_id)
        self._settle(job_id)

    def record_failure(self, job_id: str, reason: str) -> None:
        """Fail a job that has not finished, here (the audit trail records it through the job store's hook); its
        study leaves the spool unless another job still needs it. A job that already ended stays as it is."""
        log.warning("job %s failed: %s", job_id, reason)
        if self.store.transition(job_id, JobState.FAILED, expect=[JobState.QUEUED, JobState.RECEIVING,
                                                                  JobState.RUNNING], reason=reason):
            self.retention.release_study(self.store.require(job_id).study_instance_uid)

    def _finished(self, job: JobView, state: JobState, reason: str | None) -> None:
        self.audit.job_finished(job.id, job.study_instance_uid, state=state, reason=reason)

    def _settle(self, job_id: str) -> None:
        if self.store.settle(job_id) == JobState.DONE:
            self.retention.release_results(job_id)

    # --- delivery (io queue) ----------------------------------------------------------------------

    def sweep_outbox(self, job_id: str | None = None) -> int:
        """Hand every due delivery (of one job, or all) to the dispatcher; return how many."""
        due = self.store.claim_due_deliveries(DELIVERY_LEASE, job_id=job_id)
        for delivery_id in due:
            self._dispatch("deliver", delivery_id)
        return len(due)

    def deliver(self, delivery_id: int) -> None:
        found = self.store.delivery(delivery_id)
        if found is None:
            return
        item, job = found
        if item.state != DeliveryState.PENDING or job.results is None:
            return
        try:
            deliver(item.kind, item.target, job.results.located(self.results_dir / job.id), self.config)
        except PermanentError as exc:
            log.warning("delivery %d (%s) cannot succeed: %s", delivery_id, item.kind, exc)
            self.store.delivery_attempt(delivery_id, error=str(exc), retry_in=None)
            self.audit.results_delivered(job.id, job.study_instance_uid, kind=item.kind, target=item.target,
                                         error=str(exc))
        except (TransientError, OSError) as exc:
            delay = retry_delay(self.config, item.attempts + 1, item.created_at)
            log.warning("delivery %d (%s) failed, %s: %s", delivery_id, item.kind,
                        f"retry in {delay.total_seconds():.0f} s" if delay else "giving up", exc)
            self.store.delivery_attempt(delivery_id, error=str(exc), retry_in=delay)
            if delay is None:
                self.audit.results_delivered(job.id, job.study_instance_uid, kind=item.kind, target=item.target,
                                             error=str(exc))
        else:
            log.info("delivery %d (%s) done", delivery_id, item.kind)
            self.store.delivery_attempt(delivery_id, error=None, retry_in=None)
            self.audit.results_delivered(job.id, job.study_instance_uid, kind=item.kind, target=item.target)
        self._settle(job.id)

    # --- restart ----------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart with the embedded broker (whose queue was in memory), pick up unfinished jobs."""
        for job in self.store.active():
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                self._dispatch("generate", job.id)
            elif job.state == JobState.RECEIVING:
                if self.spool.has_study(job.study_instance_uid):
                    self._study_ready(job)
                else:
                    self._dispatch("retrieve", job.id)
        self.store.release_delivery_claims()
        self.sweep_outbox()

