"""The endpoints Sparkfly's servers call (DRF views, kept thin: ``inbound`` does the work).

* ``ConversionCallbackView``: a channel's ``conversion_callback_url``, fired on every
  redemption; GET or POST, values in the query string, a form body or a JSON object.
* ``NotificationView``: Sparkfly's signed event notifications (HMAC-SHA256 of the raw body).

Every request is recorded (``InboundRequest``), rejected ones included. The raw body is read
here, at most 64 KB of it, before anything parses it: the signature covers the exact bytes.
The views are exempt from ATOMIC_REQUESTS: ``inbound`` commits the record and its job
together, and a rejection's record must commit although the answer is 4xx.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from urllib.parse import parse_qsl

from django.db import DatabaseError, DataError, InterfaceError, OperationalError, connection, transaction
from django.utils.decorators import method_decorator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from sparkfly_sync import inbound
from sparkfly_sync.inbound import MAX_BODY_BYTES, Arrival, Rejected, storable
from sparkfly_sync.models import InboundRequest
from sparkfly_sync.serializers import (
    DATA_SERIALIZERS,
    EVENT_TIME_KEYS,
    ConversionAnswerSerializer,
    ConversionSerializer,
    NotificationAnswerSerializer,
    NotificationEnvelopeSerializer,
    RedemptionAnswerSerializer,
    RejectionSerializer,
    NotificationRecordSerializer,
    SparkflyTimeField,
)

logger = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
# More fields than any callback template has; parse_qsl refuses beyond it.
MAX_FIELDS = 200
# Deeper than any payload Sparkfly documents, and far from Python's recursion limit (storing a
# document serialises it recursively).
MAX_JSON_DEPTH = 32
# body_size is an integer column; a larger announced size is recorded as this.
MAX_RECORDED_SIZE = 2**31 - 1


class JSONOnly(BaseContentNegotiation):
    """Always answer JSON, whatever the caller's Accept header: a webhook's answer is for
    its logs, and a 406 would be a rejection Sparkfly could do nothing about."""

    def select_parser(self, request, parsers):
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _flatten(errors, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested errors as ``{"data.member.id": ["…"]}``."""
    if isinstance(errors, dict):
        flat: dict[str, list[str]] = {}
        for key, value in errors.items():
            name = prefix if key == "non_field_errors" and prefix else f"{prefix}.{key}" if prefix else str(key)
            flat.update(_flatten(value, name))
        return flat
    if isinstance(errors, list) and errors and all(isinstance(item, str) for item in errors):
        return {prefix or "body": [str(item) for item in errors]}
    if isinstance(errors, list):
        flat = {}
        for item in errors:
            flat.update(_flatten(item, prefix))
        return flat
    return {prefix or "body": [str(errors)]}


def _invalid(errors) -> Rejected:
    flat = _flatten(errors)
    names = ", ".join(sorted(flat))
    return Rejected(400, f"Rejected: invalid {names}.", flat)


# After a connection to the database could not be opened, this process answers 503 at once for
# this long instead of trying again: a server that takes connections without answering (one
# shutting down, a network black hole) costs each try the whole connect timeout, and a few sync
# web workers would queue Sparkfly's callbacks behind those waits until Sparkfly timed out
# (the chaos run: 415 callbacks unanswered in 5 s).
DATABASE_DOWN_PAUSE_SECONDS = 1.0
_database_down_until = 0.0


def _named(exc: DatabaseError, *, primary_message: bool = False) -> str:
    """A database error for a log line: Django's class, psycopg's (PostgreSQL's condition) and
    its SQLSTATE, and with ``primary_message`` PostgreSQL's one-line message. Never the whole
    text: its DETAIL, CONTEXT and statement lines can quote the request's values."""
    cause = exc.__cause__
    named = exc.__class__.__name__
    if cause is not None and cause.__class__.__name__ != named:
        named += f" ({cause.__class__.__name__}"
        named += f" {cause.sqlstate})" if getattr(cause, "sqlstate", None) else ")"
    diagnostic = getattr(cause, "diag", None)
    if primary_message and diagnostic is not None and diagnostic.message_primary:
        named += f": {diagnostic.message_primary}"
    return named


def _unavailable() -> Response:
    return Response(
        {"detail": "The portal could not record this request; nothing was accepted. Send it again."},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "30"},
    )


@method_decorator(transaction.non_atomic_requests, name="dispatch")
class WebhookView(APIView):
    """What both endpoints share: no DRF parsing, JSON answers, every request recorded."""

    authentication_classes: list = []
    permission_classes: list = []
    parser_classes: list = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JSONOnly
    kind: str

    def handle(self, request, arrival: Arrival, **kwargs) -> Response:
        raise NotImplementedError

    def _serve(self, request, endpoint_uuid: str, **kwargs) -> Response:
        global _database_down_until
        if time.monotonic() < _database_down_until:
            return _unavailable()
        arrival = Arrival.from_request(request, kind=self.kind, endpoint_uuid=endpoint_uuid)
        try:
            try:
                return self.handle(request, arrival, **kwargs)
            except Rejected as rejection:
                inbound.record_rejection(arrival, rejection)
                return Response(rejection.as_answer(), status=rejection.status, headers=self._headers(rejection))
        except (OperationalError, InterfaceError) as exc:
            # One line, not a traceback: in an outage every callback Sparkfly sends lands here.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            logger.warning("could not record a %s request, answered 503: %s", self.kind, reason)
            if connection.connection is None:  # no connection could be opened (not a failed query)
                _database_down_until = time.monotonic() + DATABASE_DOWN_PAUSE_SECONDS
            return _unavailable()
        except DataError as exc:
            # A value the validation let through but PostgreSQL cannot store (out of range, too
            # long, text it refuses): sending it again would fail again, so not a 503. Its
            # message can quote the value: only the error's names are logged.
            logger.error("a %s request holds a value the database refused, answered 400: %s", self.kind, _named(exc))
            rejection = Rejected(
                status.HTTP_400_BAD_REQUEST,
                "The request holds a value the portal's database cannot store; nothing was accepted. "
                "Sending it again would fail again.",
            )
            try:  # on the admin's list of rejections like any other 400 (the transaction is over)
                inbound.record_rejection(arrival, rejection)
            except DatabaseError as record_exc:  # the value may be in the request itself: still 400
                logger.error("could not record a %s request answered 400: %s", self.kind, _named(record_exc))
            return Response(rejection.as_answer(), status=rejection.status)
        except DatabaseError as exc:
            # Not the request's fault: a read-only server (just after a failover), a schema
            # from another release (a rolling deploy), a lock or serialization failure. A 400
            # would lose the callback (Sparkfly does not retry one); a 503 has it sent again.
            # One line per request, as above, with PostgreSQL's primary message (it names the
            # column, table or constraint; the values are in DETAIL and the statement, left out).
            logger.error("could not record a %s request, answered 503: %s", self.kind, _named(exc, primary_message=True))
            return _unavailable()

    @staticmethod
    def _headers(rejection: Rejected) -> dict[str, str]:
        if rejection.status == 401:
            return {"WWW-Authenticate": f'HMAC-SHA256 header="{inbound.SIGNATURE_HEADER.lower()}"'}
        return {}

    def http_method_not_allowed(self, request, *args, **kwargs):
        allowed = ", ".join(self.allowed_methods)
        rejection = Rejected(405, f"{request.method} is not accepted here; use {allowed}.")
        arrival = Arrival.from_request(request, kind=self.kind, endpoint_uuid=kwargs.get("endpoint_uuid", ""))
        try:
            inbound.record_rejection(arrival, rejection)
        except DatabaseError as exc:  # the method is wrong whatever the database does: still 405
            logger.error("could not record a %s request answered 405: %s", self.kind, _named(exc, primary_message=True))
        return Response(rejection.as_answer(), status=405, headers={"Allow": allowed})

    @staticmethod
    def read_body(request, arrival: Arrival) -> None:
        """Read the raw body into ``arrival``, refusing one over MAX_BODY_BYTES without reading it."""
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower() and not request.META.get("CONTENT_LENGTH"):
            # Django reads no body without a length: the body would look empty (a bad signature, a
            # missing field) when it is only unread.
            raise Rejected(411, "Send the body with a Content-Length; a chunked body is not read.")
        try:
            announced = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            announced = 0
        arrival.body_size = min(announced, MAX_RECORDED_SIZE)
        if announced > MAX_BODY_BYTES:
            raise Rejected(413, f"The body is {announced} bytes; at most {MAX_BODY_BYTES} are accepted.")
        # The Django request under DRF's wrapper: its stream is the raw body, unparsed.
        body = request._request.read(MAX_BODY_BYTES + 1)
        arrival.body_size = min(max(announced, len(body)), MAX_RECORDED_SIZE)
        if len(body) > MAX_BODY_BYTES:
            raise Rejected(413, f"The body is over {MAX_BODY_BYTES} bytes; at most {MAX_BODY_BYTES} are accepted.")
        arrival.body = body


# --- conversion callbacks -------------------------------------------------------------------------


def _conversion_values(request, arrival: Arrival) -> dict:
    """The callback's values from the query string and the body, merged; a field given twice
    with different values is refused (which would we believe?)."""
    sources = [_pairs(arrival.query, "query string")]
    if arrival.body.strip():
        # Django's parsed media type, without parameters such as "; charset=utf-8".
        content_type = (request._request.content_type or "").lower()
        if content_type == JSON:
            sources.append(_json_pairs(arrival.body))
        elif content_type in (FORM, ""):
            sources.append(_pairs(_text(arrival.body), "form body"))
        else:
            raise Rejected(
                415,
                f"A {content_type} body is not understood: send the values in the query string, "
                f"a form body ({FORM}) or a JSON object ({JSON}).",
            )
    values: dict = {}
    problems: dict[str, list[str]] = {}
    for pairs in sources:
        for key, value in pairs:
            unstorable = _unstorable_text(key) or (_unstorable_text(value) if isinstance(value, str) else None)
            if unstorable:
                # Named as given; the record of the request stores a cleaned copy of the name.
                problems[key or "body"] = [unstorable]
                continue
            if value in ("", None):
                values.setdefault(key, "")
                continue
            if _as_text(values.get(key, "")) not in ("", _as_text(value)):
                problems[key] = ["was given more than once, with different values"]
            values[key] = value
    if problems:
        raise _invalid(problems)
    return values


def _as_text(value) -> str:
    """A value as Sparkfly would write it in a URL: JSON 1 and query "1" are the same value."""
    return value if isinstance(value, str) else json.dumps(value)


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "Rejected: the body is not UTF-8 text.", {"body": ["is not UTF-8 text"]}) from None


def _pairs(text: str, where: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise Rejected(
            400,
            f"Rejected: the {where} is not valid (over {MAX_FIELDS} fields, or not UTF-8).",
            {where.replace(" ", "_"): [f"is not a valid URL-encoded list of at most {MAX_FIELDS} fields"]},
        ) from None


class _RefusedJSON(ValueError):
    pass


def _no_constant(name: str):
    raise _RefusedJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: a JSON number no database column can hold
        raise _RefusedJSON(f"{text[:40]} is too large a number")
    return value


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise _RefusedJSON(f"the key {storable(repeated)!r} is given more than once")
    return document


def _json_object(body: bytes) -> dict:
    """The body as a JSON object that PostgreSQL can store as it is: standard JSON (no NaN), no
    key given twice (which one would count?), nested at most MAX_JSON_DEPTH deep, and no text
    jsonb refuses (NUL, unpaired surrogates)."""
    try:
        document = json.loads(
            _text(body), parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_no_repeated_keys
        )
    except _RefusedJSON as exc:
        raise Rejected(400, f"Rejected: {exc}.", {"body": [str(exc)]}) from None
    except (ValueError, RecursionError):
        raise Rejected(400, "Rejected: the body is not valid JSON.", {"body": ["is not valid JSON"]}) from None
    if not isinstance(document, dict):
        raise Rejected(400, "Rejected: the body must be a JSON object.", {"body": ["must be a JSON object"]})
    problem = _unstorable_json(document)
    if problem:
        raise Rejected(400, f"Rejected: the body {problem}.", {"body": [problem]})
    return document


def _unstorable_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains text that is not valid Unicode (an unpaired surrogate)"
    return None


def _unstorable_json(document) -> str | None:
    """Walked without recursion: the document may be nested as deep as 64 KB allows."""
    pending = [(document, 1)]  # (value, the nesting level of the object or array it is)
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)) and depth > MAX_JSON_DEPTH:
            return f"is nested more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(value, str):
            problem = _unstorable_text(value)
            if problem:
                return problem
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = _unstorable_text(key)
                if problem:
                    return f"has a key that {problem}"
                pending.append((item, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
    return None


def _json_pairs(body: bytes) -> list[tuple[str, object]]:
    return list(_json_object(body).items())


CONVERSION_FIELDS = [
    OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.QUERY, required=name in ("credential_id", "redeemed_at"))
    for name in ConversionSerializer.NAMED
]
# On a POST the values may come in the query string, the body, or split between them.
CONVERSION_FIELDS_POST = [
    OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.QUERY, required=False)
    for name in ConversionSerializer.NAMED
]
_REJECTIONS = {
    400: OpenApiResponse(RejectionSerializer, description="A value is missing or wrong; `errors` names each."),
    404: OpenApiResponse(RejectionSerializer, description="Unknown endpoint, or a wrong secret (the same answer)."),
    405: OpenApiResponse(RejectionSerializer, description="A method the endpoint does not take."),
    410: OpenApiResponse(RejectionSerializer, description="The endpoint is switched off in the portal."),
    411: OpenApiResponse(RejectionSerializer, description="A chunked body without a Content-Length (not read)."),
    413: OpenApiResponse(RejectionSerializer, description="The body is over 64 KB."),
    503: OpenApiResponse(RejectionSerializer, description="The database could not record it; send it again."),
}
_CONVERSION_ANSWERS = {
    202: OpenApiResponse(ConversionAnswerSerializer, description="Recorded; it will be forwarded to Attentive."),
    200: OpenApiResponse(ConversionAnswerSerializer, description="Already recorded: the original, nothing queued."),
    415: OpenApiResponse(RejectionSerializer, description="A body that is neither a form nor JSON."),
    **_REJECTIONS,
}


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "integer"}]})
class _TextOrNumber(serializers.Field):
    pass


@extend_schema_field({"anyOf": [{"type": "string"}, {"type": "number"}]})
class _Text(serializers.Field):
    """Text, or a JSON number taken as its text."""


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}]}
)
class _IdList(serializers.Field):
    pass


class ConversionValuesBody(serializers.Serializer):
    """The callback's values as a form or JSON body; any of them may come in the query string
    instead (so none is required here). Ids may be text or JSON numbers; other keys are
    ``conv_ids`` annotations."""

    credential_id = _TextOrNumber(required=False)
    offer_id = _TextOrNumber(required=False)
    offer_ids = _IdList(required=False)
    xid = _Text(required=False)
    store_id = _TextOrNumber(required=False)
    redeemed_at = serializers.CharField(required=False)
    status = _Text(required=False)
    sf_uid = _Text(required=False)
    sf_ac = _Text(required=False)


class ConversionCallbackView(WebhookView):
    """A channel's conversion callback: one redemption, recorded once and forwarded once."""

    kind = InboundRequest.Kind.CONVERSION
    # Not HEAD (Django would run GET for it): a probe must not record a redemption.
    http_method_names = ["get", "post"]

    @extend_schema(
        operation_id="conversion_callback_get",
        summary="Conversion callback (GET)",
        description=(
            "Sparkfly calls the channel's conversion_callback_url on every redemption, with the "
            "`%{…}` placeholders substituted (blank when Sparkfly cannot resolve one). Any other "
            "query key is a `conv_ids` annotation of the credential. The URL carries the endpoint's "
            "UUID and secret: `manage.py sparkfly_callbacks` prints it."
        ),
        parameters=CONVERSION_FIELDS,
        responses=_CONVERSION_ANSWERS,
        tags=["Sparkfly conversion callbacks"],
    )
    def get(self, request, endpoint_uuid: str, secret: str) -> Response:
        return self._serve(request, endpoint_uuid, secret=secret)

    @extend_schema(
        operation_id="conversion_callback_post",
        summary="Conversion callback (POST)",
        description="As GET; the values may also come as a form or JSON body (merged with the query string).",
        parameters=CONVERSION_FIELDS_POST,
        request={FORM: ConversionValuesBody, JSON: ConversionValuesBody},
        responses=_CONVERSION_ANSWERS,
        tags=["Sparkfly conversion callbacks"],
    )
    def post(self, request, endpoint_uuid: str, secret: str) -> Response:
        return self._serve(request, endpoint_uuid, secret=secret)

    def handle(self, request, arrival: Arrival, *, secret: str) -> Response:
        self.read_body(request, arrival)
        endpoint = inbound.authenticate_conversion_endpoint(arrival.endpoint_uuid, secret)
        values = ConversionSerializer(data=_conversion_values(request, arrival))
        if not values.is_valid():
            raise _invalid(values.errors)
        redemption, created = inbound.record_redemption(arrival, endpoint, values.validated_data)
        answer = {"duplicate": not created, "redemption": RedemptionAnswerSerializer(redemption).data}
        return Response(answer, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


# --- event notifications ------------------------------------------------------------------------------


def _event_time(envelope: dict) -> tuple:
    """The event's own time, and the error of the metadata field that holds it, if bad."""
    for key in EVENT_TIME_KEYS:
        if envelope.get(key) not in (None, ""):
            try:
                return SparkflyTimeField().run_validation(envelope[key]), {}
            except serializers.ValidationError as exc:
                return None, {key: exc.detail}
    return None, {}


class NotificationView(WebhookView):
    """Sparkfly's signed event notifications."""

    kind = InboundRequest.Kind.NOTIFICATION
    http_method_names = ["post"]

    @extend_schema(
        operation_id="event_notification",
        summary="Event notification",
        description=(
            "Sparkfly posts each event a subscription names, signed: base64 HMAC-SHA256 of the raw "
            "body with the callback's signing_key, in x-hmac-sha256-signature. Handled: "
            + ", ".join(f"`{name}`" for name in DATA_SERIALIZERS)
            + ". Any other event is recorded and acknowledged (200) without action."
        ),
        parameters=[
            OpenApiParameter(
                "x-hmac-sha256-signature", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True,
                description="base64 HMAC-SHA256 of the raw body",
            )
        ],
        request={JSON: NotificationEnvelopeSerializer},
        examples=[
            OpenApiExample(
                "points redeemed",
                request_only=True,
                value={
                    "event_name": "loyalty.enrollment.points.redeemed",
                    "id": "5b0d6a5e-54b4-4c3c-a5f3-2d2b1a0f8f11",
                    "created_at": "2024-05-01T12:00:00Z",
                    "data": {
                        "points_redeemed": 100,
                        "member": {"id": 1, "identifier": "m-1", "enrollment": {"id": 7, "external_id": "e-7"}},
                        "reward_state": {"id": 3, "offer_state_id": 9, "credential_identifier": "ABC123"},
                    },
                },
            )
        ],
        responses={
            202: OpenApiResponse(NotificationAnswerSerializer, description="Recorded; the portal will act on it."),
            200: OpenApiResponse(
                NotificationAnswerSerializer, description="Already recorded, or an event the portal does not act on."
            ),
            401: OpenApiResponse(RejectionSerializer, description="A missing or wrong signature."),
            **_REJECTIONS,
        },
        tags=["Sparkfly event notifications"],
    )
    def post(self, request, endpoint_uuid: str) -> Response:
        return self._serve(request, endpoint_uuid)

    def handle(self, request, arrival: Arrival) -> Response:
        self.read_body(request, arrival)
        endpoint = inbound.find_notification_endpoint(arrival.endpoint_uuid)
        inbound.verify_signature(arrival, endpoint)
        document = _json_object(arrival.body)
        envelope = NotificationEnvelopeSerializer(data=document)
        if not envelope.is_valid():
            # Rejected anyway: name a bad event time too, so one answer lists every problem.
            raise _invalid({**envelope.errors, **_event_time(document)[1]})
        event_name = envelope.validated_data["event_name"]
        data_serializer = DATA_SERIALIZERS.get(event_name)
        occurred_at = None
        if data_serializer is not None:
            # Checked only for the events the portal acts on: any other is recorded and
            # acknowledged as it came, whatever its data and metadata look like.
            errors: dict = {}
            data = data_serializer(data=document.get("data"))
            if not data.is_valid():
                errors["data"] = data.errors
            occurred_at, time_errors = _event_time(document)
            errors.update(time_errors)
            if errors:
                raise _invalid(errors)
        notification, created = inbound.record_notification(
            arrival,
            endpoint,
            event_id=inbound.notification_event_id(document, arrival.body),
            event_name=event_name,
            occurred_at=occurred_at,
            payload=document,
            handled=data_serializer is not None,
        )
        answer = {"duplicate": not created, "notification": NotificationRecordSerializer(notification).data}
        accepted = created and data_serializer is not None
        return Response(answer, status=status.HTTP_202_ACCEPTED if accepted else status.HTTP_200_OK)
