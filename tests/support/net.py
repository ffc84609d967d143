"""Loopback helpers for tests that run real servers: free ports and waiting for them."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - e.g. a server not up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_error!r})"
                                                                            if last_error else ""))


def stop_process(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, as an init system would, then SIGKILL if it does not stop in time."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def skip_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep urllib3's retries (orthanc_api_client retries a refused connection) but not its seconds of backoff."""
    from urllib3.util.retry import Retry

    monkeypatch.setattr(Retry, "_sleep_backoff", lambda self: None)
