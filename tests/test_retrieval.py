"""Retrieval from the PACS: what is permanent (nothing to ask, nothing there) and what is transient (PACS down)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin.config import Settings
from plugin.errors import PacsNotConfigured, PermanentError, RetrievalError, TransientError
from plugin.retrieval import Retriever
from tests.support.net import free_port, skip_retry_backoff


def test_without_a_pacs_retrieval_is_a_permanent_failure(tmp_path: Path) -> None:
    retriever = Retriever(Settings(data_dir=tmp_path))
    assert not retriever.configured and retriever.exists("1.2.3") is None
    with pytest.raises(PacsNotConfigured, match="no PACS is configured") as raised:
        retriever.request("1.2.3")
    assert isinstance(raised.value, PermanentError) and not isinstance(raised.value, TransientError)


def test_a_pacs_that_does_not_answer_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_retry_backoff(monkeypatch)
    retriever = Retriever(Settings(data_dir=tmp_path, pacs_url=f"http://127.0.0.1:{free_port()}"))
    assert retriever.configured
    for attempt in (lambda: retriever.exists("1.2.3"), lambda: retriever.request("1.2.3")):
        with pytest.raises(RetrievalError) as raised:
            attempt()
        assert isinstance(raised.value, TransientError)


def test_a_dicom_only_pacs_that_is_down_is_transient(tmp_path: Path) -> None:
    retriever = Retriever(Settings(data_dir=tmp_path, pacs_dicom=f"PACS@127.0.0.1:{free_port()}"))
    with pytest.raises(RetrievalError):
        retriever.request("1.2.3", ["1.2.3.4"])
