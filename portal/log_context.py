"""Ids that every log line carries while a request is served or a job runs.

A web request gets a request id: the load balancer's ``X-Request-ID`` when it is a sane token
(so one id follows the request through the balancer's logs and ours), else a new one; the
response echoes it, and gunicorn's access log reads it back from there. A worker's job gets its
job id, its task name and the ids its task was called with (delivery, redemption, notification,
…), bound by one procrastinate worker middleware, so no task has to remember to do it.

The ids live in context variables: asyncio gives each job its own copy, and procrastinate runs
sync tasks through asgiref's ``sync_to_async``, which carries them into the task's thread.
``IdsOnRecords`` (on every handler, like the secret-masking filter) copies the ones set onto
each log record, where the JSON formatter writes them as fields.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

_ids: contextvars.ContextVar[dict[str, object]] = contextvars.ContextVar("log_ids", default={})

# What a task's keyword argument is called on a log line. Issuance's ``request_id`` is renamed:
# on a log line "request_id" is the web request's.
TASK_ARGUMENT_FIELDS = {
    "delivery_id": "delivery_id",
    "redemption_id": "redemption_id",
    "notification_id": "notification_id",
    "batch_id": "issuance_batch_id",
    "request_id": "issuance_request_id",
    "push_id": "segment_push_id",
}

# Letters, digits and the punctuation of common trace formats (UUIDs, AWS "Root=1-…;Parent=…").
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:;=+/@-]{1,128}")
REQUEST_ID_HEADER = "X-Request-ID"


@contextmanager
def log_ids(**ids) -> Iterator[None]:
    """Every line logged inside the block carries these ids (added to those already bound)."""
    token = _ids.set({**_ids.get(), **{name: value for name, value in ids.items() if value is not None}})
    try:
        yield
    finally:
        _ids.reset(token)


def current_ids() -> dict[str, object]:
    return dict(_ids.get())


class IdsOnRecords(logging.Filter):
    """Puts the bound ids on the record (a field the log call set itself wins). Django logs a
    4xx/5xx answer after the middleware has returned, with the request on the record: its id
    is taken from there."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _ids.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if not hasattr(record, "request_id") and (request_id := getattr(getattr(record, "request", None), "request_id", None)):
            record.request_id = request_id
        return True


def request_id_of(header_value: str | None) -> str:
    """The balancer's id when it is a sane token, else a new one."""
    if header_value and _SANE_REQUEST_ID.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """First in MIDDLEWARE: every line logged while serving the request, redirects and errors
    included, carries its id; the response echoes it in ``X-Request-ID``."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_id_of(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        with log_ids(request_id=request_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


async def job_ids_middleware(call_next, context, worker):
    """procrastinate worker middleware (PROCRASTINATE_WORKER_DEFAULTS): binds the job's id,
    task and id arguments for the whole job, the task's own thread included."""
    job = context.job
    ids = {"job_id": job.id, "task": job.task_name}
    for argument, field in TASK_ARGUMENT_FIELDS.items():
        if argument in job.task_kwargs:
            ids[field] = job.task_kwargs[argument]
    with log_ids(**ids):
        return await call_next()
