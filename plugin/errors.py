"""The application's errors, split by what a caller should do about them.

``PermanentError``: retrying cannot help (bad input, an unknown study, a missing
configuration); the job or delivery fails at once with the message as its reason.
``TransientError``: the world may change (a peer is down, a connection broke);
the step is retried with :func:`backoff` until its limit. Every message is safe to
record and show: it never carries patient data.
"""

from __future__ import annotations

import datetime as dt


class ProgemuError(Exception):
    """Base of the application's own errors."""


class UsageError(ProgemuError):
    """A refusal of a command-line request, reported as one line without a traceback."""


class PermanentError(ProgemuError):
    """Retrying cannot help; fail with this message as the reason."""


class TransientError(ProgemuError, ConnectionError):
    """A peer or resource was not available; retry later."""


class PermanentJobError(PermanentError):
    """The job's input can never work (an unreadable prior, a hypothesis the model refuses)."""


class InputRefused(PermanentJobError):
    """The input gate refused the prior (another body part or view, or outside what the model was trained on)."""


class StudyNotFound(PermanentError, LookupError):
    """The PACS does not hold the study, or it holds no series that can serve as the prior."""


class PacsNotConfigured(PermanentError):
    """The study is not here and no PACS is configured to retrieve it from."""


class RetrievalError(TransientError):
    """The PACS could not be asked, or did not send the study."""


class DeliveryError(TransientError):
    """A delivery attempt failed; the outbox retries it."""


class UnknownDeliveryTarget(PermanentError):
    """A delivery names a kind of target this node has no handler for."""


def backoff(attempt: int, *, first: float, cap: float) -> dt.timedelta:
    """The delay before retry number ``attempt`` (1-based): ``first`` doubling each time, at most ``cap`` seconds."""
    return dt.timedelta(seconds=min(cap, first * 2 ** max(0, attempt - 1)))
