"""One request id per web request, carried into the Celery tasks it queues and into every log line.

A client may send `X-Request-ID` (a proxy's id, kept when it is sane); otherwise one is made. The id is
answered in the response header, set on each task's headers when it is published, and restored in the worker
while the task runs, so `grep <id>` finds the request and all the work it caused.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

from celery import signals

HEADER = "HTTP_X_REQUEST_ID"
TASK_HEADER = "request_id"
SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
current_task: contextvars.ContextVar[str] = contextvars.ContextVar("task", default="-")


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets the request id for the request's duration and answers it in `X-Request-ID`."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        offered = request.META.get(HEADER, "")
        request_id = offered if SANE_ID.match(offered) else new_request_id()
        request.request_id = request_id
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["X-Request-ID"] = request_id
        logging.getLogger("webapp.requests").info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "request_id": request_id,
                "status": response.status_code,
                "duration_ms": round(1000 * (time.perf_counter() - started), 1),
            },
        )
        return response


class RequestIdFilter(logging.Filter):
    """Adds `request_id` and `task` to every record (the handler's formatter may show them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            # django.request logs an error response after the middleware has returned: its record carries the request
            record.request_id = (
                getattr(getattr(record, "request", None), "request_id", None) or current_request_id.get()
            )
        if not hasattr(record, "task"):
            record.task = current_task.get()
        return True


RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, task, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _on_publish(headers=None, **kwargs):
    request_id = current_request_id.get()
    if headers is not None and request_id != "-" and TASK_HEADER not in headers:
        headers[TASK_HEADER] = request_id


def _on_task_start(task_id=None, task=None, **kwargs):
    request_id = getattr(task.request, TASK_HEADER, None) or (task.request.headers or {}).get(TASK_HEADER)
    current_request_id.set(request_id or f"task-{task_id}")
    current_task.set(f"{task.name}[{task_id}]")


def _on_task_end(**kwargs):
    current_request_id.set("-")
    current_task.set("-")


def connect_celery_signals() -> None:
    signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="ops.request_id.publish")
    signals.task_prerun.connect(_on_task_start, weak=False, dispatch_uid="ops.request_id.prerun")
    signals.task_postrun.connect(_on_task_end, weak=False, dispatch_uid="ops.request_id.postrun")
