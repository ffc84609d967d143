"""Shared fixtures: small ProgEmu checkpoints the tests make themselves (no hub is reachable); the test tiers.

Two markers sort the tests into tiers:

* ``integration``: needs a server or a heavy program outside this process: Orthanc, PostgreSQL, Redis, Chromium, the
  Node.js FHIR server (tests/fhir_server), a node subprocess (`progemu serve` or `progemu listen`), or docker compose
  and hadolint; or runs real DICOM associations against a listener on a port (DCMTK or pynetdicom as the peer). A
  test parametrised over SQLite and PostgreSQL carries it on the PostgreSQL case only.
* ``slow`` (registered in pyproject.toml): heavy computation, no outside service: ONNX export, training, calibration
  and evaluation runs, the shipped demo model, or a model run end to end through the CLI.

    pytest -m "not integration and not slow"    # the fast tier: under a minute on 2 cores
    pytest -m "integration or slow"              # the rest
    pytest                                       # everything (`make test`)

Every log record of a session, the project's DEBUG records included, is checked for the test patients' names, IDs
and birth dates (``PhiLogCheck``); a session that logged one fails at its end, naming the test and the logger.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inference.model import ModelSpec, ProgEmuModel, build_small_progemu, load_progemu, save_progemu
from tests.support.databases import redis_database
from tests.support.dicom_fixtures import TEST_PHI

PROJECT_LOGGERS = ("plugin", "dicom_io", "inference", "benchmarks")
"""Logged at DEBUG during tests, so that the PHI check sees every record they make."""
MIN_PHI_CHARS = 4
"""Shorter values ("P-9") would match ordinary text."""


def phi_forms(values: Iterable[str]) -> tuple[str, ...]:
    """The values as a log line could show them: a name also as "DOE JANE", "JANE DOE" and "DOE, JANE"; a date
    also as 1951-02-03 (FHIR's form)."""
    forms = set()
    for value in values:
        forms.add(value)
        if "^" in value:
            family, given = value.split("^")[:2]
            forms.update({f"{family} {given}", f"{given} {family}", f"{family}, {given}"})
        if re.fullmatch(r"\d{8}", value):
            forms.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    return tuple(sorted(form for form in forms if len(form) >= MIN_PHI_CHARS))


@dataclass(frozen=True)
class PhiLeak:
    test: str
    logger: str
    level: str
    value: str
    message: str


class PhiLogCheck(logging.Handler):
    """Finds patient data in log records: each formatted record (its traceback included) is searched for
    ``values``, and every find is kept with the test that was running."""

    def __init__(self, values: Iterable[str]) -> None:
        super().__init__(logging.DEBUG)
        self.values = phi_forms(values)
        self.test = "(outside a test)"
        self.leaks: list[PhiLeak] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 - a record that cannot be formatted cannot be searched; logging reports it
            message = str(record.msg)
        for value in self.values:
            if (at := message.find(value)) >= 0:
                self.leaks.append(PhiLeak(self.test, record.name, record.levelname, value,
                                          message[max(0, at - 120):at + len(value) + 120]))


def _session_check() -> PhiLogCheck | None:
    return next((h for h in logging.getLogger().handlers if isinstance(h, PhiLogCheck)), None)


def pytest_configure(config: pytest.Config) -> None:
    # `slow` is registered in pyproject.toml; `integration` here, where the tiers are described
    config.addinivalue_line("markers", "integration: needs an external server or heavy external program "
                                       "(Orthanc, PostgreSQL, Redis, Chromium, the FHIR server, a `progemu serve` or "
                                       "`progemu listen` subprocess, docker compose/hadolint), or real DICOM "
                                       "associations with a listener on a port")
    logging.getLogger().addHandler(PhiLogCheck(TEST_PHI))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)


def pytest_runtest_logstart(nodeid: str) -> None:
    check = _session_check()
    if check is not None:
        check.test = nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a session whose logs hold a test patient's name, ID or birth date."""
    check = _session_check()
    if check is not None and check.leaks and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    check = _session_check()
    if check is None or not check.leaks:
        return
    terminalreporter.section("patient data in log records", red=True)
    for leak in check.leaks[:50]:
        terminalreporter.write_line(f"{leak.test}: {leak.logger} {leak.level} logged {leak.value!r}: "
                                    f"{leak.message!r}")
    terminalreporter.write_line(f"{len(check.leaks)} record(s) with patient data: the session fails")


def pytest_unconfigure() -> None:
    check = _session_check()
    if check is not None:
        logging.getLogger().removeHandler(check)


SMALL_SPEC = ModelSpec(name="ProgEmu", version="test-small-0", image_size=64, max_text_tokens=24)


@pytest.fixture
def redis_broker() -> Iterator[str]:
    """A broker URL on the Redis server here: a database index of this test's own (tests/support/databases.py)."""
    with redis_database() as url:
        yield url


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ProgEmu-architecture checkpoint in the Hugging Face format (64 px, 8x8 grid)."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    out = tmp_path_factory.mktemp("ckpt") / "small"
    network, tokenizer = build_small_progemu(codebook_size=64, hidden_size=32, layers=2, heads=2,
                                             vq_base_channels=32, seed=3)
    save_progemu(network, tokenizer, SMALL_SPEC, out)
    return out


@pytest.fixture(scope="session")
def small_model(small_checkpoint: Path) -> ProgEmuModel:
    return load_progemu(small_checkpoint)
