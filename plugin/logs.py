"""Log lines as text or as one JSON object each (``log_format``), with the job and the request they belong to.

The ids travel in context variables: a Celery task's job or delivery id is bound from its arguments while it runs
(the ``task_prerun``/``task_postrun`` signals), and each API request gets a request id (the caller's
``X-Request-ID`` when it is a plain token, else a new one), which the answer carries back in the same header. A
filter on the handler copies whichever are set onto every record; the JSON formatter writes them as fields. The
records themselves are what they were in text: nothing about the patient is logged in either format.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter
from starlette import types as asgi
from starlette.datastructures import Headers, MutableHeaders

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "X-Request-ID"
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""A caller's request id is taken only as such a token: it goes into every line of the request's log."""

job_id: ContextVar[str | None] = ContextVar("progemu_job_id", default=None)
delivery_id: ContextVar[str | None] = ContextVar("progemu_delivery_id", default=None)
request_id: ContextVar[str | None] = ContextVar("progemu_request_id", default=None)
CONTEXT = {"job_id": job_id, "delivery_id": delivery_id, "request_id": request_id}
"""Record attribute (and JSON field) -> where its value is, for the current task or request."""
TASK_ARGUMENTS = ("job_id", "delivery_id")
"""Bound from a task's argument of the same name."""


class ContextFilter(logging.Filter):
    """Puts the ids of the current task or request on each record (only those that are known)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in CONTEXT.items():
            value = variable.get()
            if value is not None:
                setattr(record, name, value)
        return True


def handler(log_format: Literal["text", "json"], stream: TextIO = sys.stderr) -> logging.Handler:
    """A handler that writes ``stream`` in ``log_format``, with the context's ids on each record."""
    made = logging.StreamHandler(stream)
    made.addFilter(ContextFilter())
    made.setFormatter(JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                                    rename_fields={"levelname": "level", "name": "logger"})
                      if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return made


def configure(level: int, log_format: Literal["text", "json"] = "text") -> None:
    """The root logger's one handler, on stderr (a no-op where the root logger has handlers already: pytest's).
    In JSON, Python's warnings become records too, so that every line on stderr is one object."""
    logging.basicConfig(level=level, handlers=[handler(log_format)])
    if log_format == "json":
        logging.captureWarnings(True)


def task_started(task: Any, args: tuple = (), kwargs: dict | None = None, **_: object) -> None:
    """Celery's task_prerun: bind the ids the task was given (generate and retrieve: job_id; deliver:
    delivery_id)."""
    arguments = inspect.signature(task.run).bind_partial(*args, **(kwargs or {})).arguments
    for name in TASK_ARGUMENTS:
        value = arguments.get(name)
        CONTEXT[name].set(None if value is None else str(value))


def task_finished(**_: object) -> None:
    """Celery's task_postrun: the worker thread or process goes on to other tasks."""
    for name in TASK_ARGUMENTS:
        CONTEXT[name].set(None)


class RequestIds:
    """ASGI middleware: each HTTP request's id, in the log context while it runs and in its answer's header."""

    def __init__(self, app: asgi.ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER)
        ident = given if given and _PLAIN_ID.fullmatch(given) else uuid.uuid4().hex

        async def send_with_id(message: asgi.Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = ident
            await send(message)

        token = request_id.set(ident)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
