"""Property-based fuzz of the two webhook endpoints Sparkfly's servers call (hypothesis, Django's
test client in process, real PostgreSQL).

Each generated case is one request, mixing valid and invalid on purpose: ids as digits, huge,
negative, floats, unicode digits or text; times in every way Sparkfly may write them (RFC 3339
with offsets, Rails' "… UTC", naive, an unencoded "+") and far in the future or the past, or
garbage; extra keys; a key given twice; bodies as forms, JSON objects, arrays, scalars, deeply
nested, with NaN, invalid UTF-8 or random bytes, under any Content-Type; any method; right, wrong
and malformed secrets, endpoint UUIDs and signatures (computed over the exact bytes sent, so the
deeper validation is reached, not only the 401).

Every case is held to the same properties (``check_answer``):

* no server error (status < 500), and the answer is JSON;
* the answer conforms to the portal's own OpenAPI schema (served at ``api-schema``, checked with
  openapi-core) for that operation and status;
* a 4xx names what was wrong (``detail``); a 400 names each bad field in ``errors``; the status
  is the one the request calls for (``Expect``, worked out from how the case was generated);
* exactly one InboundRequest is recorded, with the status answered, the endpoint UUID as the
  path gave it and a rejection's answer as given (both cleaned: NUL as U+FFFD), an announced
  size too large for its column clamped;
* a new 2xx creates exactly one Redemption / Notification and (for a handled type) one job; a
  duplicate or a rejection creates none;
* no endpoint secret appears in what was stored of the request, nor any header beyond the
  audit list;
* an accepted POST callback is one the schema's request admits (``check_documented_request``).

Half the generated cases are requests the portal should accept, written in every way it should
accept them (so 2xx, duplicates and the job queue are exercised, not only rejections); the other
half mix in bad values. At least 1,000 generated cases run per endpoint (counted, so a silently
shorter run fails, and each answer from 200 to 415 must turn up), with ``derandomize=True`` so
every CI run tries the same cases. Two more properties replay one valid callback / event N times:
one record, one job.

The ``@example(...)`` cases noted "fixed: …" are inputs the fuzz once found breaking a property
(a 500, a 503 for text PostgreSQL cannot store, a 400 naming only the first bad field, a 415 for
a charset parameter): the portal has since been fixed, and they stay as regression guards, held
to the answer now decided; those noted "decided: …" pin the decided semantics below. The five
findings fixed last (793be7e, FIXED_FINDINGS) are guarded by the ``test_fixed_findings_*``
tests. The fuzz holds the portal to the decided answer only: it lets no other answer through.
(An input that breaks a property is best kept in a test of its own, explicit examples only:
hypothesis runs explicit examples before generating any, and stops at a failing one, so a
failing example in the fuzz itself would keep the 1,000 generated cases from running at all.)

What the portal decided for input PostgreSQL cannot store (webhooks.py, inbound.py):

* a NUL or an unpaired surrogate in a conversion key or value (query or form) is a 400 naming
  that key as given (a key "" is named "body"); in a JSON body (either endpoint), such text
  anywhere, NaN or Infinity, a key repeated in one object, or nesting deeper than
  ``MAX_JSON_DEPTH`` (the top object is level 1, each nested object or array adds one) is a 400
  naming "body", before any field is read;
* what is recorded of the request is a cleaned copy (NUL as U+FFFD), so even those are kept; a
  NUL in the endpoint UUID is a 404; an announced Content-Length beyond PostgreSQL's integer is a
  413, its size recorded as 2**31-1;
* every bad field is named at once (conv_ids values, each non-scalar extra key, an empty key as
  "conv_ids", a notification's event time beside its envelope or data errors);
* a Content-Type is read by its media type (parameters such as a charset are ignored); RFC 3339's
  lower-case "t" / "z" is read; JSON ``1`` and query ``"1"`` for the same field are one value.

And with the second review (20b8968): the body is read before the endpoint is looked up (a 413
comes before a 404 / 410; a chunked body without a Content-Length is a 411); an id written in
more than 19 digits and a JSON number beyond a double (1e400) are 400s; an event of a type the
portal does not act on is acknowledged whatever its data and metadata look like; points may be 0.

And with 793be7e: the nesting limit counts objects and arrays only (32 levels whose innermost
holds values are read); a rejected envelope names a bad event time beside its own errors; an
unhandled event's ``"data": null`` is acknowledged too; the 411 is documented on both operations;
the POST request schema documents xid / status / sf_uid / sf_ac as text or a JSON number.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import hmac
import itertools
import json
import math
import re
import string
import sys
import traceback
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, quote, quote_plus

import pytest
from django.db import connection, transaction
from django.urls import reverse
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from openapi_core import OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.templating.paths.exceptions import OperationNotFound
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS30Validator
from procrastinate.contrib.django.models import ProcrastinateJob

from sparkfly_sync import inbound
from sparkfly_sync.models import (
    ConversionEndpoint,
    ForwardingState,
    InboundRequest,
    Notification,
    NotificationEndpoint,
    Redemption,
)
from sparkfly_sync.serializers import (
    DATA_SERIALIZERS,
    EVENT_ID_KEYS,
    EVENT_TIME_KEYS,
    MAX_CONV_ID_KEY,
    MAX_CONV_ID_VALUE,
    MAX_CONV_IDS,
    MAX_SPARKFLY_ID,
    ConversionSerializer,
)

pytestmark = pytest.mark.django_db

MAX_BODY = inbound.MAX_BODY_BYTES
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
NAMED = ConversionSerializer.NAMED
FORWARD = "sparkfly_sync.forward_redemption"
PROCESS = "sparkfly_sync.process_notification"
# The state of a notification recorded without action.
UNHANDLED_STATE = ForwardingState.IGNORED
CONVERSION_PATH = "/hooks/sparkfly/channels/{endpoint_uuid}/{secret}/conversions"
NOTIFICATION_PATH = "/hooks/sparkfly/notifications/{endpoint_uuid}"
# InboundRequest.body_size is a PositiveIntegerField: PostgreSQL's INTEGER.
PG_INT_MAX = 2**31 - 1
# How deep a JSON body may nest (the top object is level 1; each object or array in it adds one).
MAX_JSON_DEPTH = 32
NUL_MESSAGE = "contains a NUL character"
SURROGATE_MESSAGE = "contains text that is not valid Unicode (an unpaired surrogate)"
PYTHON_RECURSION_LIMIT = 1000  # CPython's default, which the portal's servers run with

FUZZ_EXAMPLES = 1000
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run, so CI is reproducible
    database=None,  # derandomized: nothing to remember (and no .hypothesis/ in the tree)
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
REPLAYS = settings(FUZZ, max_examples=25)

SIGNING_KEY = base64.b64encode(bytes(range(64))).decode()
PREVIOUS_SIGNING_KEY = base64.b64encode(b"p" * 48).decode()
ROTATED_SIGNING_KEY = base64.b64encode(b"r" * 48).decode()
WRONG_SIGNING_KEY = base64.b64encode(b"w" * 48).decode()


# =================================================================================================
# Values and what the portal must make of them
# =================================================================================================


@dataclass(frozen=True)
class V:
    """A generated value and its verdict: "valid", "invalid", "blank" (absent) or "unknown"."""

    value: object
    verdict: str
    raw_plus: bool = False  # a "+" written unencoded in a query or form: it decodes as a space
    count: int | None = None  # offer_ids: how many ids it names
    number: int | None = None  # a valid id, as the portal reads it
    instant: datetime | None = None  # a valid time, as the portal reads it

    def decoded(self):
        if self.raw_plus and isinstance(self.value, str):
            return self.value.replace("+", " ")
        return self.value


ABSENT = object()
SAFE_CHAR = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
ANY_CHAR = st.characters(exclude_categories=("Cs",))  # NUL included
SURROGATE = st.characters(categories=("Cs",))
WS = st.sampled_from(["", " ", "\t", "\n", "  "])
PATH_CHAR = st.characters(exclude_categories=("Cs",), exclude_characters="/")
# Header values as a WSGI server hands them over: latin-1, no control characters (servers
# refuse those, NUL included, before Django sees the request).
HEADER_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60),
    st.integers(inbound.MAX_HEADER_VALUE - 2, inbound.MAX_HEADER_VALUE + 100).map(lambda n: "h" * n),  # kept cut short
)


@functools.cache
def _one_of_values(options: tuple) -> st.SearchStrategy:
    return st.sampled_from(options)


@functools.cache
def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def pick(draw, *options):
    """One of ``options`` (repeat one to make it likelier); the strategy is built once."""
    return draw(_one_of_values(options))


def one_in(draw, n: int) -> bool:
    return draw(_integers(1, n)) == 1


def _has_surrogate(value) -> bool:
    return isinstance(value, str) and any("\ud800" <= char <= "\udfff" for char in value)


def _json_only(v: V) -> bool:
    """Can only travel in a JSON body (not a string, or not encodable in a URL)."""
    return not isinstance(v.value, str) or _has_surrogate(v.value)


def unstorable(text) -> str | None:
    """Why PostgreSQL cannot store ``text`` (the message a 400 gives), or None."""
    if not isinstance(text, str):
        return None
    if "\x00" in text:
        return NUL_MESSAGE
    if _has_surrogate(text):
        return SURROGATE_MESSAGE
    return None


def cleaned(value):
    """What the record of a request stores of ``value``: NUL as U+FFFD, lone surrogates replaced."""
    if isinstance(value, dict):
        return {cleaned(key): cleaned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [cleaned(item) for item in value]
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value


def nested_list(levels: int, filled: bool) -> list:
    """``levels`` arrays one in another; the innermost holds a 1 (``filled``) or nothing."""
    value = [1] if filled else []
    for _ in range(levels - 1):
        value = [value]
    return value


class _Refused(Exception):
    pass


def _refuse_constant(name):
    raise _Refused("JSON: NaN or Infinity")


def _refuse_infinite(text):
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise _Refused("JSON: a number beyond a double")
    return value


def _refuse_repeats(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Refused("JSON: a key repeated in one object")
    return dict(pairs)


def json_depth(document) -> int:
    """How deep the objects and arrays nest (the values they hold add no level): the top object
    is level 1, each object or array in it adds one. Walked without recursion."""
    containers = 0
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            containers = max(containers, depth)
            pending.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return containers


def _unstorable_anywhere(document) -> str | None:
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if unstorable(key):
                    return "JSON: NUL or lone surrogate"
                pending.append(item)
        elif isinstance(value, list):
            pending.extend(value)
        elif unstorable(value):
            return "JSON: NUL or lone surrogate"
    return None


@dataclass(frozen=True)
class JSONBody:
    document: object = None
    refused: str = ""  # why the portal must refuse it (a 400 naming "body"), or ""


def read_json_body(text: str) -> JSONBody:
    """A JSON body as the decided semantics read it: standard JSON (no NaN / Infinity, no number
    beyond a double such as 1e400), no key
    repeated within an object, an object at the top, nested at most MAX_JSON_DEPTH deep, and no
    text PostgreSQL cannot store (NUL, lone surrogates) in any key or value."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_refuse_infinite, object_pairs_hook=_refuse_repeats)
    except _Refused as exc:
        return JSONBody(refused=str(exc))
    except (ValueError, RecursionError):
        return JSONBody(refused="JSON: not JSON")
    if not isinstance(document, dict):
        return JSONBody(refused="JSON: not an object")
    if json_depth(document) > MAX_JSON_DEPTH:
        return JSONBody(refused="JSON: nested deeper than MAX_JSON_DEPTH")
    problem = _unstorable_anywhere(document)
    if problem:
        return JSONBody(refused=problem)
    return JSONBody(document)


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")


def media_type(header: str | None) -> str | None:
    """A Content-Type's media type, lower case, without parameters ("" for none); None when the
    header is too odd for the oracle to say how it is read."""
    header = header or ""
    if ";" not in header:
        return header.strip().lower()
    main = header.split(";", 1)[0].strip()
    return main.lower() if _MEDIA_TYPE.fullmatch(main) else None


# --- ids ----------------------------------------------------------------------------------------

VALID_ID = st.integers(1, MAX_SPARKFLY_ID)
NOT_ASCII_DIGITS = st.text(
    st.characters(categories=("Nd", "No"), exclude_characters=string.digits), min_size=1, max_size=4
)
BAD_ID_TEXT = st.one_of(
    st.integers(max_value=0).map(str),
    st.integers(MAX_SPARKFLY_ID + 1, 10**40).map(str),
    st.floats().map(repr),  # "1.0", "nan", "inf", "1e+16": never all digits
    NOT_ASCII_DIGITS,  # "٣", "²", "１２"
    st.sampled_from(["+5", "0x1F", "1_000", "1 2", "12abc", "1,2", "-", "  "]),
    st.text(ANY_CHAR, min_size=1, max_size=12).filter(lambda s: not (s.strip().isascii() and s.strip().isdigit())),
)
BAD_ID_JSON = st.one_of(
    st.floats(),
    st.booleans(),
    st.integers(max_value=0),
    st.integers(MAX_SPARKFLY_ID + 1, 10**40),
    st.lists(st.integers(1, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


# Each factory gives a field's values, valid and not; ``clean=True``: valid ones only (half the
# cases are requests the portal should accept, written in all the ways it should accept them).


@functools.cache  # building a strategy costs far more than drawing from it
def id_values(json_ok: bool, clean: bool = False) -> st.SearchStrategy[V]:
    valid = st.builds(lambda pad, n, pad2: V(f"{pad}{n}{pad2}", "valid", number=n), WS, VALID_ID, WS)
    # Text of more than 19 digits is refused, leading zeros or not (19 hold any BIGINT).
    leading_zeros = VALID_ID.map(lambda n: V(f"000{n}", "valid", number=n) if len(f"000{n}") <= 19 else V(f"000{n}", "invalid"))
    good = [valid, valid, leading_zeros] + ([VALID_ID.map(lambda n: V(n, "valid", number=n))] if json_ok else [])
    if clean:
        return st.one_of(good)
    invalid = BAD_ID_TEXT.map(lambda s: V(s, "invalid"))
    options = [*good, invalid, invalid, st.just(V("", "blank")), st.text(ANY_CHAR, max_size=8).map(lambda s: V(s, "unknown"))]
    if json_ok:
        options += [BAD_ID_JSON.map(lambda x: V(x, "invalid")), st.just(V(None, "blank"))]
    return st.one_of(options)


@functools.cache  # building a strategy costs far more than drawing from it
def offer_ids_values(json_ok: bool, clean: bool = False, single: bool = False) -> st.SearchStrategy[V]:
    """``single``: naming one offer (then offer_id may be left out)."""
    def joined(ids, blanks):
        parts = [str(n) for n in ids]
        for position, blank in blanks:
            parts.insert(position % (len(parts) + 1), blank)
        return V(",".join(parts), "valid", count=len(ids), number=ids[0] if len(ids) == 1 else None)

    valid = st.builds(joined, st.lists(VALID_ID, min_size=1, max_size=1 if single else 4),
                      st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["", " "])), max_size=2))
    if clean:
        json_list = st.lists(VALID_ID, min_size=1 if single else 0, max_size=1 if single else 4)
        return st.one_of(valid, *([json_list.map(lambda ids: V(ids, "valid", count=len(ids), number=ids[0] if len(ids) == 1 else None))] if json_ok else []))
    bad_piece = BAD_ID_TEXT.filter(lambda s: "," not in s and s.strip())
    invalid = st.builds(lambda good, bad, at: V(",".join([*map(str, good[:at]), bad, *map(str, good[at:])]), "invalid"),
                        st.lists(VALID_ID, max_size=3), bad_piece, st.integers(0, 3))
    options = [valid, valid, invalid, st.just(V("", "blank"))]
    if json_ok:
        options += [
            st.lists(VALID_ID, max_size=4).map(lambda ids: V(ids, "valid", count=len(ids), number=ids[0] if len(ids) == 1 else None)),
            st.builds(lambda good, bad: V([*good, bad], "invalid"), st.lists(VALID_ID, max_size=2),
                      st.one_of(st.floats(), st.booleans(), st.none(), st.integers(max_value=0), st.just("x"), st.lists(st.integers(), max_size=1))),
            st.one_of(st.integers(), st.floats(), st.booleans(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)).map(lambda x: V(x, "invalid")),
        ]
    return st.one_of(options)


# --- times --------------------------------------------------------------------------------------

VALID_FROM, VALID_TO = datetime(2000, 1, 2), datetime(2025, 12, 31)  # a day clear of the 2000 limit
OFFSETS = st.sampled_from([0, 0, 60, -60, 120, 330, -300, -420, 545, 14 * 60, -14 * 60, 30])
GARBAGE_TIMES = [
    "yesterday", "now", "2024/05/01 12:00:00", "01/05/2024 12:00", "May 1 2024", "2024-13-01T00:00:00Z",
    "2024-02-30T12:00:00Z", "2024-05-01T25:00:00Z", "2024-05-01T12:61:00Z", "2024-05-01T12:00:00+25:00",
    "2024-05-01T12:00:00 UTC UTC", "T12:00:00Z", "2024-05-01T", "--", " UTC", "12:00", "  ",
]


def _write_time(local: datetime, offset_minutes: int | None, style: str, fraction: int) -> str:
    """``local`` written the way Sparkfly might: ``offset_minutes`` None means no offset (UTC)."""
    date = f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    clock = f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}" + (f".{fraction:06d}" if fraction else "")
    if style == "rails":
        return f"{date} {clock} UTC"
    separator = " " if style == "space" else "T"
    if offset_minutes is None:
        return f"{date}{separator}{clock}"
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    if style == "z" and offset_minutes == 0:
        zone = "Z"
    elif style == "compact":
        zone = f"{sign}{hours:02d}{minutes:02d}"
    else:
        zone = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{date}{separator}{clock}{zone}"


@functools.cache
def _datetimes(low: datetime, high: datetime) -> st.SearchStrategy[datetime]:
    return st.datetimes(min_value=low, max_value=high)


@st.composite
def written_times(draw, low: datetime, high: datetime, verdict: str, plus_ok: bool) -> V:
    local = draw(_datetimes(low, high)).replace(microsecond=pick(draw, 0, 0, 0, 123000, 1))
    style = pick(draw, "z", "offset", "compact", "space", "rails", "naive")
    offset = None if style in ("rails", "naive") else draw(OFFSETS)
    text = _write_time(local, offset, style, local.microsecond)
    if style in ("z", "offset", "compact") and one_in(draw, 4):
        text = text.replace("T", "t").replace("Z", "z")  # RFC 3339 allows either case
    instant = (local - timedelta(minutes=offset or 0)).replace(tzinfo=timezone.utc) if verdict == "valid" else None
    raw_plus = plus_ok and "+" in text and pick(draw, True, False)
    return V(text, verdict, raw_plus=raw_plus, instant=instant)


def _relative(seconds: int, verdict: str) -> V:
    moment = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return V(moment.isoformat(), verdict, instant=moment if verdict == "valid" else None)


@functools.cache  # building a strategy costs far more than drawing from it
def time_values(json_ok: bool, plus_ok: bool = True, clean: bool = False) -> st.SearchStrategy[V]:
    good = [
        written_times(VALID_FROM, VALID_TO, "valid", plus_ok),
        written_times(VALID_FROM, VALID_TO, "valid", plus_ok),
        st.integers(-86400, 240).map(lambda s: _relative(s, "valid")),  # a little clock skew is fine
    ]
    if clean:
        return st.one_of(good)
    options = [
        *good,
        st.integers(600, 86400 * 60).map(lambda s: _relative(s, "invalid")),  # beyond the 5 minutes
        written_times(datetime(2100, 1, 1), datetime(9999, 12, 30), "invalid", plus_ok),  # far future
        written_times(datetime(1, 1, 2), datetime(1999, 12, 30), "invalid", plus_ok),  # far past
        st.sampled_from(GARBAGE_TIMES).map(lambda s: V(s, "invalid")),
        st.text(st.characters(exclude_categories=("Cs", "Nd")), min_size=1, max_size=15).map(lambda s: V(s, "invalid")),
        st.text(ANY_CHAR, max_size=25).map(lambda s: V(s, "unknown")),
        st.just(V("", "blank")),
    ]
    if json_ok:
        options += [
            st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2)).map(lambda x: V(x, "invalid")),
            st.just(V(None, "blank")),
        ]
    return st.one_of(options)


# --- text -----------------------------------------------------------------------------------------


@functools.cache  # building a strategy costs far more than drawing from it
def text_values(max_length: int, json_ok: bool, *, blank_ok: bool = False, clean: bool = False) -> st.SearchStrategy[V]:
    """A DRF CharField's values (trimmed; NUL and surrogates refused)."""
    valid = st.text(SAFE_CHAR, min_size=1, max_size=min(max_length, 40)).filter(
        lambda s: (blank_ok or s.strip()) and len(s.strip()) <= max_length
    ).map(lambda s: V(s, "valid"))
    numbers = st.one_of(st.integers(-(10**20), 10**20), st.floats()).map(lambda x: V(x, "valid"))
    if clean:
        return st.one_of(valid, *([numbers] if json_ok else []))
    whitespace = st.text(st.sampled_from(" \t\n"), min_size=1, max_size=4).map(lambda s: V(s, "valid" if blank_ok else "invalid"))
    too_long = st.integers(max_length + 1, max_length + 20).map(lambda n: V("x" * n, "invalid"))
    with_nul = st.tuples(st.text(SAFE_CHAR, max_size=5), st.text(SAFE_CHAR, max_size=5)).map(lambda t: V(t[0] + "\x00" + t[1], "invalid"))
    options = [valid, valid, valid, whitespace, too_long, with_nul, st.just(V("", "blank"))]
    if json_ok:
        options += [
            numbers,
            st.one_of(st.booleans(), st.lists(st.text(max_size=2), max_size=2), st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=1)).map(lambda x: V(x, "invalid")),
            st.tuples(st.text(SAFE_CHAR, max_size=3), SURROGATE).map(lambda t: V(t[0] + t[1], "invalid")),
            st.just(V(None, "blank")),
        ]
    return st.one_of(options)


# --- extra keys (conv_ids) ------------------------------------------------------------------------


@functools.cache  # building a strategy costs far more than drawing from it
def extra_values(json_ok: bool, clean: bool = False) -> st.SearchStrategy[V]:
    good = [st.text(SAFE_CHAR, max_size=30).map(lambda s: V(s, "valid"))]
    if json_ok:
        good += [st.one_of(st.integers(-(10**30), 10**30), st.floats()).map(lambda x: V(x, "valid")), st.just(V(None, "blank"))]
    if clean:
        return st.one_of(good)
    too_long = st.integers(MAX_CONV_ID_VALUE + 1, MAX_CONV_ID_VALUE + 30).map(lambda n: V("v" * n, "invalid"))
    with_nul = st.tuples(st.text(SAFE_CHAR, max_size=3), st.text(SAFE_CHAR, max_size=3)).map(lambda t: V(t[0] + "\x00" + t[1], "invalid"))
    # (A NUL is refused before any field is read: rarer, so the other checks are reached.)
    options = [*good, *good, *good, st.one_of(too_long, too_long, with_nul)]
    if json_ok:
        options += [
            st.one_of(st.booleans(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)).map(lambda x: V(x, "not_text")),
            st.tuples(st.text(SAFE_CHAR, max_size=3), SURROGATE).map(lambda t: V(t[0] + t[1], "invalid")),
        ]
    return st.one_of(options)


CLEAN_EXTRA_KEYS = st.text(st.characters(categories=("Ll", "Lu", "Nd", "Pc")), min_size=1, max_size=12).filter(lambda key: key not in NAMED)
EXTRA_KEYS = st.one_of(
    CLEAN_EXTRA_KEYS,
    st.text(ANY_CHAR, max_size=12),
    st.integers(MAX_CONV_ID_KEY + 1, MAX_CONV_ID_KEY + 10).map(lambda n: "k" * n),
).filter(lambda key: key not in NAMED)

# =================================================================================================
# Conversion callbacks
# =================================================================================================

CONVERSION_ENDPOINTS = {
    # name: (which endpoint, which of its secrets, answer when reached)
    "current": ("main", "secret", None),
    "uuid-variant": ("main", "secret", None),  # the UUID written otherwise (upper case, hex, braces, urn)
    "rotated-current": ("rotated", "secret", None),
    "rotated-previous": ("rotated", "previous_secret", None),  # within its grace period
    "expired-previous": ("expired", "previous_secret", 404),
    "wrong-secret": ("main", "wrong", 404),
    "disabled": ("disabled", "secret", 410),
    "disabled-wrong-secret": ("disabled", "wrong", 404),
    "unknown-uuid": (None, "secret", 404),
    "malformed-uuid": (None, "secret", 404),
}
SECRET_MISSES = ["drop-last", "add-char", "upper", "prefix", "first-ten", "space", "random"]


@dataclass(frozen=True)
class Occurrence:
    key: str
    v: V
    place: str  # "query" | "body"


@dataclass(frozen=True)
class ConversionCase:
    method: str = "GET"
    endpoint: str = "current"
    uuid_text: str = ""  # "malformed-uuid": the path segment; "uuid-variant": upper | hex | braces | urn
    secret_miss: str = ""  # "wrong-secret": how the secret is wrong
    secret_text: str = ""  # ... and the random text for "random"
    occurrences: tuple[Occurrence, ...] = ()
    body_format: str = "none"  # "none" | "form" | "json" | "raw"
    raw_body: bytes = b""
    raw_query: str = ""  # appended to the query string as is
    content_type: str | None = None
    content_length: str | None = None  # overrides the header
    pad_to: int | None = None  # JSON whitespace appended up to this many bytes
    nest: tuple[str, int] | None = None  # a raw JSON body whose field nests (see NotificationCase.nest)
    ensure_ascii: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    note: str = ""  # an explicit example: why it is kept


def fixed(case, why: str):
    """An input that broke a property until the portal was fixed: kept as an explicit example
    (a regression guard), held to the answer now decided. ``why``: what it once broke."""
    return replace(case, note="fixed: " + why)


def decided(case, why: str):
    """An explicit example of a decided semantics (the fuzz draws such cases too, but rarely)."""
    return replace(case, note="decided: " + why)


def seed(case):
    """A plainly valid request, tried first."""
    return replace(case, note="seed")


NAMED_VALUES = {
    "credential_id": id_values,
    "offer_id": id_values,
    "store_id": id_values,
    "offer_ids": offer_ids_values,
    "redeemed_at": lambda json_ok, clean: time_values(json_ok, clean=clean),
    "xid": lambda json_ok, clean: text_values(100, json_ok, clean=clean),
    "status": lambda json_ok, clean: text_values(50, json_ok, clean=clean),
    "sf_uid": lambda json_ok, clean: text_values(255, json_ok, clean=clean),
    "sf_ac": lambda json_ok, clean: text_values(255, json_ok, clean=clean),
}
# How often each named field is present: the required ones nearly always.
PRESENCE = {"credential_id": 0.9, "redeemed_at": 0.9, "offer_id": 0.7, "offer_ids": 0.3}

RAW_BODIES = st.one_of(
    st.binary(max_size=120),
    st.text(ANY_CHAR, max_size=120).map(lambda s: s.encode()),
    st.sampled_from([
        b"[1,2]", b'"text"', b"123", b"null", b"true", b"{", b'{"credential_id": ', b"{'a': 1}", b'{"a": NaN}',
        b"\xff\xfe{}", b'\xef\xbb\xbf{"credential_id": "1"}', b"{}", b"[]", b'{"a": Infinity}', b"\x00",
        b'{"credential_id": "1", "credential_id": "2"}', b"credential_id=1&credential_id=2", b"%ff=1", b"a=%zz",
        b"&" * 250, b"a=1&" * 201, b'{"credential_id": "1", "offer_id": "2", "redeemed_at": "2024-05-01T12:00:00Z", "ref": 1e400}',
    ]),
    st.tuples(st.integers(1, 3000) | st.integers(800, 1000), st.sampled_from([b"[", b'{"a":'])).map(
        lambda t: t[1] * t[0] + b"1" + (b"]" if t[1] == b"[" else b"}") * t[0]
    ),
    st.tuples(st.sampled_from(NAMED), st.integers(800, 1000)).map(
        lambda t: b'{"%s": ' % t[0].encode() + b"[" * t[1] + b"]" * t[1] + b"}"
    ),
)
UNSUPPORTED_TYPES = st.sampled_from([
    "text/plain", "application/xml", "multipart/form-data; boundary=x", "application/octet-stream", "application/merge-patch+json",
    "json", "text/plain; charset=utf-8", "application/jsonx; charset=utf-8", "application/x-www-form-urlencoded-x",
])
CONTENT_TYPES = st.one_of(
    UNSUPPORTED_TYPES,
    UNSUPPORTED_TYPES,
    # Read by the media type, whatever the parameters (or the case, or the spaces around it).
    st.sampled_from(["application/json; charset=utf-8", "APPLICATION/JSON", "application/x-www-form-urlencoded; charset=UTF-8", "",
                     "application/json;charset=UTF-8", " application/json ", "application/json; charset=latin-1",
                     "application/json ;", "application/x-www-form-urlencoded;", "; charset=utf-8"]),
    st.builds("{}; {}".format, st.sampled_from([JSON_TYPE, FORM_TYPE, "text/plain"]),
              st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
)
# The Content-Types a JSON or form body may come with (a parameter is ignored).
JSON_TYPES = (JSON_TYPE, JSON_TYPE, "Application/JSON", "application/json; charset=utf-8", "application/json;charset=UTF-8")
FORM_TYPES = (FORM_TYPE, FORM_TYPE, None, "Application/X-WWW-Form-Urlencoded", "application/x-www-form-urlencoded; charset=UTF-8")
OTHER_METHODS = st.one_of(
    st.sampled_from(["PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "CONNECT"]),
    st.text(st.sampled_from(string.ascii_uppercase), min_size=1, max_size=12),
)
EXTRA_HEADERS = st.lists(
    st.tuples(st.sampled_from(["User-Agent", "X-Request-Id", "X-Forwarded-For", "Accept", "X-Real-Ip", "Cookie", "Authorization",
                               "Transfer-Encoding"]), HEADER_TEXT | st.sampled_from(["identity", "gzip, chunked"])),
    max_size=2,
    unique_by=lambda header: header[0],
)
ODD_CONTENT_LENGTHS = st.one_of(
    st.integers(MAX_BODY + 1, PG_INT_MAX).map(str),
    st.integers(PG_INT_MAX + 1, 10**12).map(str),
    st.sampled_from(["abc", "-1", " ", "1.5", ""]),  # "": none (a chunked body is then refused)
)


def path_segments(min_size: int = 1, max_size: int = 60):
    return st.text(PATH_CHAR, min_size=min_size, max_size=max_size).filter(lambda s: s not in (".", ".."))


MALFORMED_UUIDS = st.one_of(
    path_segments(max_size=150), st.uuids().map(lambda u: str(u)[:-1]),
    st.builds(lambda u, at: str(u)[:at] + "\x00" + str(u)[at:], st.uuids(), st.integers(0, 36)),  # a NUL (%00)
)
# Arrays nested around MAX_JSON_DEPTH: (levels, whether the innermost holds a value); as a member
# of the top object, the document then nests levels + 1 deep.
NEAR_DEPTH_LIMIT = st.sampled_from([(levels, filled) for levels in range(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 1) for filled in (True, False)])
DEPTH_CHANCE = st.sampled_from([False, False, False, True])
CHUNKED_CHANCE = st.sampled_from([False] * 24 + [True])
SECRET_TEXTS = path_segments()
EXTRA_KEY_LISTS = st.lists(EXTRA_KEYS, max_size=3, unique=True)
CLEAN_EXTRA_KEY_LISTS = st.lists(CLEAN_EXTRA_KEYS, max_size=3, unique=True)
PAD_SIZES = st.integers(MAX_BODY - 2, MAX_BODY + 2) | st.integers(MAX_BODY + 3, MAX_BODY + 5000)


@st.composite
def conversion_cases(draw) -> ConversionCase:
    # Half the cases are requests the portal should accept (in all the forms it should accept),
    # the other half mix in every kind of bad value.
    clean = pick(draw, True, False)
    method = pick(draw, "GET", "POST") if not one_in(draw, 8) else draw(OTHER_METHODS)
    endpoint = pick(draw, *["current"] * 14, *CONVERSION_ENDPOINTS, "disabled")
    case = ConversionCase(method=method, endpoint=endpoint)
    if endpoint == "uuid-variant":
        case = replace(case, uuid_text=pick(draw, "upper", "hex", "braces", "urn"))
    elif endpoint == "malformed-uuid":
        case = replace(case, uuid_text=draw(MALFORMED_UUIDS))
    if endpoint in ("wrong-secret", "disabled-wrong-secret"):
        case = replace(case, secret_miss=pick(draw, *SECRET_MISSES), secret_text=draw(SECRET_TEXTS))

    body_format = pick(draw, "none", "none", "form", "json", "json", *(() if clean else ("raw",)))
    json_ok = body_format == "json"
    occurrences: list[Occurrence] = []

    def place(key: str, v: V, again: bool = False) -> Occurrence | None:
        where = "query"
        if _json_only(v):
            where = "body"
        elif body_format in ("form", "json"):
            where = pick(draw, "query", "body")
        if again and json_ok and where == "body" and (clean or pick(draw, True, False, False)):
            # A key repeated in a JSON object is refused: a clean request (and most others)
            # gives it again in the query string only.
            if _json_only(v):
                return None
            where = "query"
        if where == "body" and json_ok:
            v = replace(v, raw_plus=False)  # JSON keeps its "+"
        return Occurrence(key, v, where)

    def add(key: str, values: st.SearchStrategy[V]) -> None:
        first = draw(values)
        occurrences.append(place(key, first))
        for _ in range(pick(draw, *[0] * 8, 1, 2)):  # the same key given again
            again = place(key, first if clean or pick(draw, True, False) else draw(values), again=True)
            if again is not None:
                occurrences.append(again)
        value = first.value
        if json_ok and isinstance(value, (int, float)) and (clean or pick(draw, True, False)) and one_in(draw, 3):
            # A JSON number (or true / false) in the body and the same value as text in the
            # query string: one value, not a conflict.
            occurrences.append(Occurrence(key, replace(first, value=json.dumps(value), raw_plus=False), "query"))

    offers = pick(draw, "offer_id", "offer_id", "offer_ids", "both")
    for name in NAMED:
        if clean and name in ("credential_id", "redeemed_at"):
            add(name, NAMED_VALUES[name](json_ok, True))
        elif clean and name == "offer_id":
            if offers != "offer_ids":
                add(name, id_values(json_ok, True))
        elif clean and name == "offer_ids":
            if offers != "offer_id":
                add(name, offer_ids_values(json_ok, True, offers == "offer_ids"))
        elif draw(_integers(1, 100)) <= 100 * PRESENCE.get(name, 0.3):
            add(name, NAMED_VALUES[name](json_ok, clean))
    if not clean and one_in(draw, 30):  # around MAX_CONV_IDS extra keys
        for n in range(draw(_integers(MAX_CONV_IDS - 2, MAX_CONV_IDS + 5))):
            occurrences.append(Occurrence(f"x{n}", V("1", "valid"), "query"))
    else:
        for key in draw(CLEAN_EXTRA_KEY_LISTS if clean else EXTRA_KEY_LISTS):
            add(key, extra_values(json_ok, clean))
            if json_ok and not clean and one_in(draw, 20):  # a key only JSON can carry
                occurrences.append(Occurrence(key + draw(SURROGATE), V("v", "valid"), "body"))
    if len(occurrences) > 1 and pick(draw, True, False):
        order = [draw(_integers(0, 10**6)) for _ in occurrences]
        occurrences = [o for _, o in sorted(zip(order, occurrences), key=lambda pair: pair[0])]

    if body_format == "form":
        content_type = pick(draw, *FORM_TYPES)
    elif body_format == "json":
        content_type = pick(draw, *JSON_TYPES)
    else:
        content_type = pick(draw, JSON_TYPE, FORM_TYPE, None, None) if clean or pick(draw, True, False) else draw(CONTENT_TYPES)
    pad_to = nest = content_length = None
    raw_query = ""
    if not clean:
        if body_format in ("form", "json") and one_in(draw, 10):
            content_type = draw(CONTENT_TYPES)
        if body_format in ("json", "raw") and one_in(draw, 12):
            pad_to = draw(PAD_SIZES)
        elif one_in(draw, 40):
            pad_to = draw(_integers(MAX_BODY + 1, MAX_BODY + 5000))
        if body_format == "raw" and one_in(draw, 5):
            nest = (pick(draw, *NAMED, "ref"), draw(_integers(0, 150)))
        content_length = draw(ODD_CONTENT_LENGTHS) if one_in(draw, 10) else None
        raw_query = pick(draw, "&", "&&=", "%ff=1", "a=%zz", "=", "a=1&a=2", "+=+", "a=1&a=") if one_in(draw, 6) else ""
    elif json_ok and one_in(draw, 10):
        pad_to = draw(_integers(MAX_BODY - 100, MAX_BODY))  # just under the limit: accepted
    if json_ok and pad_to is None and content_length is None and draw(DEPTH_CHANCE):
        # Arrays nested around MAX_JSON_DEPTH, in a body otherwise read as it is (so even a clean
        # case: a 400, naming the key, or "body" when too deep).
        levels, filled = draw(NEAR_DEPTH_LIMIT)
        key = pick(draw, "deep", "deep", *(() if clean else NAMED))
        occurrences.append(Occurrence(key, V(nested_list(levels, filled), "invalid" if key in NAMED else "not_text"), "body"))
    case = replace(
        case,
        occurrences=tuple(occurrences),
        body_format=body_format,
        raw_body=draw(RAW_BODIES) if body_format == "raw" else b"",
        nest=nest,
        raw_query=raw_query,
        content_type=content_type,
        content_length=content_length,
        pad_to=pad_to,
        ensure_ascii=pick(draw, True, False),
        headers=tuple(draw(EXTRA_HEADERS)),
    )
    if not clean and draw(CHUNKED_CHANCE):  # a chunked body sent without a Content-Length
        case = replace(case, content_length="", headers=(*(h for h in case.headers if h[0] != "Transfer-Encoding"),
                                                           ("Transfer-Encoding", "chunked")))
    return case


def _encode_pair(occurrence: Occurrence) -> str:
    value = occurrence.v.value
    assert isinstance(value, str)
    encoded = quote(value, safe="+:") if occurrence.v.raw_plus else quote_plus(value)
    return f"{quote_plus(occurrence.key)}={encoded}"


def _json_text(occurrences, ensure_ascii: bool) -> str:
    """A JSON object written pair by pair (so a key given twice stays twice in the text)."""
    members = []
    for occurrence in occurrences:
        ascii_only = ensure_ascii or _has_surrogate(occurrence.key) or _has_surrogate(occurrence.v.value)
        members.append(json.dumps(occurrence.key, ensure_ascii=ascii_only) + ": " + json.dumps(occurrence.v.value, ensure_ascii=ascii_only))
    return "{" + ", ".join(members) + "}"


def render_conversion_body(case: ConversionCase) -> bytes:
    in_body = [o for o in case.occurrences if o.place == "body"]
    if case.nest is not None:
        key, short_of = case.nest
        levels = max(PYTHON_RECURSION_LIMIT - stack_depth() - short_of, 1)
        body = b'{"credential_id": "1", "offer_id": "2", "redeemed_at": "2024-05-01T12:00:00Z", %s: %s}' % (
            json.dumps(key).encode(), nested(levels))
    elif case.body_format == "form":
        body = "&".join(map(_encode_pair, in_body)).encode()
    elif case.body_format == "json":
        body = _json_text(in_body, case.ensure_ascii).encode("utf-8", "surrogatepass")
    else:
        body = case.raw_body
    if case.pad_to is not None and case.pad_to > len(body):
        body += (b"y" if case.body_format == "form" else b" ") * (case.pad_to - len(body))
    return body


def render_query(case: ConversionCase) -> str:
    pairs = [_encode_pair(o) for o in case.occurrences if o.place == "query"]
    return "&".join([*pairs, case.raw_query] if case.raw_query else pairs)


# --- the oracle ------------------------------------------------------------------------------------


@dataclass
class Expect:
    """What a case calls for: the statuses it may get (None: any under 500), the fields a 400
    must name, and (``messages``) what it must say of some of them."""

    statuses: set[int] | None
    fields: set[str] = field(default_factory=set)
    why: str = ""
    values: dict = field(default_factory=dict)  # a valid callback's values: V by field
    messages: dict[str, str] = field(default_factory=dict)


def body_refused(why: str) -> Expect:
    return Expect({400}, {"body"}, why)


def effective_body(body: bytes, content_length: str | None) -> bytes:
    """What the view reads: Django reads CONTENT_LENGTH bytes, none when it is not a number."""
    if content_length is None:
        return body
    try:
        announced = int(content_length)
    except ValueError:
        return b""
    return body[: max(announced, 0)]


def chunked_without_length(case, body: bytes) -> bool:
    """A chunked body with no Content-Length: Django would read it as empty, so it is refused.
    (The test client sends the body's length, if it has one, unless the case overrides it.)"""
    chunked = any(name.lower() == "transfer-encoding" and "chunked" in value.lower() for name, value in case.headers)
    return chunked and (case.content_length == "" or (case.content_length is None and not body))


def announced_too_big(case) -> bool:
    try:
        return case.content_length is not None and int(case.content_length) > MAX_BODY
    except ValueError:
        return False


def _parse_form(text: str):
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=200, errors="strict")
    except (ValueError, UnicodeDecodeError):
        return None


def expect_conversion(case: ConversionCase, body: bytes) -> Expect:
    if case.method.upper() not in ("GET", "POST"):
        return Expect({405}, why="method")
    # The body is read before the endpoint is looked up (so a 404 / 410 record keeps it).
    read = effective_body(body, case.content_length)
    if chunked_without_length(case, body):
        return Expect({411}, why="chunked")
    if announced_too_big(case) or len(read) > MAX_BODY:
        return Expect({413}, why="size")
    answer = CONVERSION_ENDPOINTS[case.endpoint][2]
    if answer:
        return Expect({answer}, why="endpoint")
    query_pairs = _parse_form(render_query(case))
    if query_pairs is None:
        return Expect({400}, {"query_string"}, "query string")
    body_pairs, known = [], True
    if read.strip():
        content_type = media_type(case.content_type)
        if content_type is None:
            return Expect(None, why="a Content-Type the oracle does not parse")
        if content_type not in (JSON_TYPE, FORM_TYPE, ""):
            return Expect({415}, why="content type")
        try:
            text = read.decode("utf-8")
        except UnicodeDecodeError:
            return body_refused("not UTF-8")
        if content_type == JSON_TYPE:
            # The whole document is checked before any field is read.
            document = read_json_body(text)
            if document.refused:
                return body_refused(document.refused)
            body_pairs, known = list(document.document.items()), case.body_format == "json"
        else:
            body_pairs = _parse_form(text)
            if body_pairs is None:
                return Expect({400}, {"form_body"}, "form")
            known = case.body_format == "form"
        known = known and read == body
    return expect_conversion_values(case, query_pairs, body_pairs, known)


def _as_text(value) -> str:
    """A value as a URL would carry it: JSON 1 and query "1" are one value."""
    return value if isinstance(value, str) else json.dumps(value)


def expect_conversion_values(case: ConversionCase, query_pairs, body_pairs, known: bool) -> Expect:
    """``query_pairs`` / ``body_pairs``: what the view reads (key, value), in order; ``known``:
    the body's pairs are the case's own (so each value's verdict is known)."""
    # First the pairs as read: text PostgreSQL cannot store, and a value given twice.
    problems: dict[str, list[str]] = collections.defaultdict(list)
    values = {}
    for key, value in [*query_pairs, *body_pairs]:
        why = unstorable(key) or unstorable(value)
        if why:
            problems[key or "body"].append(why)
            continue
        if value in ("", None):
            values.setdefault(key, "")
            continue
        if _as_text(values.get(key, "")) not in ("", _as_text(value)):
            problems[key].append("conflict")
        values[key] = value
    if problems:
        # Refused before any value is read; each named as given.
        messages = {key: whys[0] for key, whys in problems.items() if len(set(whys)) == 1 and whys[0] != "conflict"}
        return Expect({400}, set(problems), "unstorable text or a conflict", messages=messages)
    if not known:
        return Expect(None, why="a body the oracle does not follow")

    # Then each value's verdict, as generated.
    query = [(o.key, o.v) for o in case.occurrences if o.place == "query"]
    # What the raw end of the query string adds: keys beyond the named ones, text values.
    query += [(key, V(value, "valid" if value else "blank")) for key, value in parse_qsl(case.raw_query, keep_blank_values=True)]
    body = [(o.key, o.v) for o in case.occurrences if o.place == "body"] if body_pairs else []
    read = [(key, v.decoded()) for key, v in [*query, *body]]
    assert read == [*query_pairs, *body_pairs], f"the oracle is out of step with what was sent: {read} != {[*query_pairs, *body_pairs]}"
    verdicts = {}
    for key, v in [*query, *body]:
        if v.decoded() in ("", None):
            verdicts.setdefault(key, V("", "blank"))
        else:
            verdicts[key] = v  # the last value given (all are the same value)

    bad, unknown = set(), False
    named = {key: verdicts[key] for key in NAMED if key in verdicts and verdicts[key].verdict != "blank"}
    extra = {key: verdicts[key].decoded() for key in verdicts if key not in NAMED}
    for key, v in named.items():
        if v.verdict == "invalid":
            bad.add(key)
        unknown |= v.verdict == "unknown"
    for required in ("credential_id", "redeemed_at"):
        if required not in named:
            bad.add(required)
    if "offer_id" not in named and "offer_ids" not in named:
        bad.add("offer_id")
    if len(extra) > MAX_CONV_IDS or any(len(key) > MAX_CONV_ID_KEY for key in extra) or "" in extra:
        bad.add("conv_ids")
    for key, value in extra.items():
        if not key or len(key) > MAX_CONV_ID_KEY:
            continue  # named "conv_ids"
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            bad.add(key)  # each non-scalar value, not only the first
        elif len(str(value)) > MAX_CONV_ID_VALUE:
            bad.add(key)
    if bad:
        return Expect({400}, bad, "fields")
    if unknown:
        return Expect(None, why="unknown values")
    if "offer_id" not in named and named["offer_ids"].count != 1:
        return Expect({400}, {"offer_id"}, "offer_ids names several")
    return Expect({200, 202}, why="valid", values=named)


# =================================================================================================
# Event notifications
# =================================================================================================


@dataclass(frozen=True)
class Leaf:
    kind: str  # "id" | "text" | "time"
    nullable: bool = False


@dataclass(frozen=True)
class Obj:
    fields: tuple[tuple[str, object, bool], ...]  # (name, node, required)


_ID, _ID_NULL, _TEXT, _TIME = Leaf("id"), Leaf("id", True), Leaf("text", True), Leaf("time", True)
_POINTS, _POINTS_NULL = Leaf("points"), Leaf("points", True)  # a whole number, 0 included (a free reward)
_MEMBER_WITH_ENROLLMENT = Obj((("id", _ID, True), ("identifier", _TEXT, False), ("enrollment", Obj((("id", _ID, True),)), True)))
# The shapes serializers.DATA_SERIALIZERS checks, with what each field takes.
DATA_SHAPES = {
    "sf.member.created": Obj((("member", Obj((("id", _ID, True),)), True),)),
    "sf.member.updated": Obj((("member", Obj((("id", _ID, True),)), True),)),
    "loyalty.enrollment.created": Obj((
        ("enrollment", Obj((("id", _ID, True), ("member", Obj((("id", _ID, True), ("identifier", _TEXT, False))), False))), True),
    )),
    "loyalty.enrollment.points.awarded": Obj((("member", _MEMBER_WITH_ENROLLMENT, True),)),
    "loyalty.enrollment.points.redeemed": Obj((
        ("points_redeemed", _POINTS, True),
        ("member", _MEMBER_WITH_ENROLLMENT, True),
        ("reward_state", Obj((
            ("id", _ID, True), ("offer_state_id", _ID_NULL, False), ("credential_identifier", _TEXT, False),
            ("issued_point_value", _POINTS_NULL, False), ("created_at", _TIME, False),
        )), True),
    )),
}
assert set(DATA_SHAPES) == set(DATA_SERIALIZERS), "a handled event without a shape here: add it"

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=False, allow_infinity=False),
    st.text(SAFE_CHAR, max_size=20),
)
# What Sparkfly could put anywhere in an event: also NaN, Infinity, NUL and lone surrogates.
JSON_ODD = st.one_of(st.floats(), st.text(ANY_CHAR, max_size=10), st.tuples(st.text(max_size=3), SURROGATE).map("".join))
JSON_VALUES = st.recursive(
    st.one_of(JSON_SCALARS, JSON_SCALARS, JSON_SCALARS, JSON_ODD),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(ANY_CHAR, max_size=8), inner, max_size=3)),
    max_leaves=5,
)


NOT_OBJECTS = st.one_of(st.integers(), st.text(SAFE_CHAR, max_size=5), st.lists(st.integers(), max_size=2), st.booleans())
EXTRA_MEMBERS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2)
JSON_CLEAN_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(SAFE_CHAR, max_size=8), inner, max_size=3)),
    max_leaves=5,
)
CLEAN_EXTRA_MEMBERS = st.dictionaries(st.text(SAFE_CHAR, max_size=8), JSON_CLEAN_VALUES, max_size=2)
VALID_ID_JSON = st.one_of(VALID_ID, VALID_ID.map(str))
BAD_ID_ANY = st.one_of(BAD_ID_JSON, BAD_ID_TEXT)


@functools.cache
def _leaf_values(kind: str, mode: str) -> st.SearchStrategy[V]:
    strategy = text_values(255, True, blank_ok=True) if kind == "text" else time_values(True, plus_ok=False)
    return strategy.filter(lambda v: v.verdict in (mode, "blank") and v.value is not None)


def _whole_number(value) -> bool:
    """0 or more, as a JSON integer or as up to 19 ASCII digits (spaces around them trimmed)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 19:
        value = int(value.strip())
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SPARKFLY_ID


def node_values(draw, node, path: str, required: bool, clean: bool = False):
    """A value for ``node`` at ``path`` ("data.member.id"), and the paths a 400 must name."""
    absent_ok = not required
    if isinstance(node, Obj):
        top = path == "data"  # the envelope's own checks cover a missing or non-object data
        mode = "ok" if top or clean else pick(draw, *["ok"] * 12, "absent", "null", "not-object")
        if mode == "absent":
            return ABSENT, set() if absent_ok else {path}
        if mode == "null":
            return None, {path}
        if mode == "not-object":
            return draw(NOT_OBJECTS), {path}
        value, bad = {}, set()
        for name, child, child_required in node.fields:
            child_value, child_bad = node_values(draw, child, f"{path}.{name}", child_required, clean)
            if child_value is not ABSENT:
                value[name] = child_value
            bad |= child_bad
        declared = {name for name, _, _ in node.fields}
        for key, extra in draw(CLEAN_EXTRA_MEMBERS if clean else EXTRA_MEMBERS).items():
            if key not in declared:
                value[key] = extra  # keys the serializer does not know are kept, not checked
        return value, bad
    if clean:
        mode = pick(draw, *["valid"] * 6, *(("absent",) if absent_ok else ()), *(("null",) if node.nullable else ()))
    else:
        mode = pick(draw, *["valid"] * 6, "invalid", "invalid", "invalid", "absent", "null")
    if mode == "absent":
        return ABSENT, set() if absent_ok else {path}
    if mode == "null":
        return None, set() if node.nullable else {path}
    if node.kind in ("id", "points"):
        if mode == "valid":
            return draw(VALID_ID_JSON if node.kind == "id" or not one_in(draw, 4) else st.sampled_from([0, "0", " 00 "])), set()
        value = draw(BAD_ID_ANY)
        return value, set() if node.kind == "points" and _whole_number(value) else {path}
    v = draw(_leaf_values(node.kind, mode))
    if node.kind == "time" and v.verdict == "blank":
        # "" for an optional time: DRF reads it as a bad time (only null stands for none).
        return (None, set()) if clean else (v.value, {path})
    return v.value, {path} if v.verdict == "invalid" else set()


NOTIFICATION_ENDPOINTS = {
    "current": ("main", None),
    "uuid-variant": ("main", None),
    "rotated": ("rotated", None),
    "keyless": ("keyless", 401),
    "disabled": ("disabled", 410),
    "unknown-uuid": (None, 404),
    "malformed-uuid": (None, 404),
}
# How the signature header is made; True: it proves the key.
SIGNATURES = {
    "text-key": True,  # HMAC with the key's text
    "decoded-key": True,  # HMAC with the bytes the base64 key encodes
    "padded": True,  # right, with whitespace around it
    "previous-key": None,  # right only for the rotated endpoint
    "wrong-key": False,
    "tampered": False,  # over other bytes
    "unpadded": False,  # base64 without its "="
    "malformed": False,
    "empty": False,
    "missing": False,
}


@dataclass(frozen=True)
class NotificationCase:
    method: str = "POST"
    endpoint: str = "current"
    uuid_text: str = ""
    document: object = None  # serialized with json.dumps (allow_nan), unless raw_body is given
    raw_body: bytes | None = None
    ensure_ascii: bool = True
    signature: str = "text-key"
    signature_text: str = ""  # for "malformed"
    content_type: str | None = JSON_TYPE
    content_length: str | None = None
    pad_to: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # A body whose data nests this many levels short of what the recursion limit allows (the
    # depth where JSON still parses but later steps may run out of stack):
    nest: int | None = None
    # A member of the document written again after it (the same key twice in one object), with
    # this value: refused.
    repeat: tuple[str, object] | None = None
    # What the document calls for (worked out as it was generated):
    bad_envelope: frozenset = frozenset()  # {"event_name"} when it is bad
    handled: bool = False
    bad_data: frozenset = frozenset()  # a handled event's: "data" itself, or paths in it
    time: tuple[str, str] | None = None  # (the time key read, its verdict)
    data_null: bool = False  # "data": null
    note: str = ""  # an explicit example: why it is kept


HANDLED = list(DATA_SERIALIZERS)
UNHANDLED = ["sf.transaction.completed", "loyalty.enrollment.updated", "sf.offer.created", "loyalty.reward.issued"]


UNHANDLED_NAMES = st.one_of(
    st.sampled_from(UNHANDLED),
    st.text(SAFE_CHAR, min_size=1, max_size=100).filter(lambda s: s.strip() and s.strip() not in DATA_SERIALIZERS),
    st.integers(),
)
BAD_NAMES = st.one_of(
    st.just(ABSENT), st.sampled_from(["", "  ", None]), st.integers(101, 130).map(lambda n: "e" * n),
    st.tuples(st.sampled_from(HANDLED), st.just("\x00")).map("".join), st.booleans(),
    st.lists(st.sampled_from(HANDLED), max_size=1), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.tuples(st.text(max_size=3), SURROGATE).map("".join),
)
NOT_DATA = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))
UNHANDLED_DATA = st.dictionaries(st.text(ANY_CHAR, max_size=10), JSON_VALUES, max_size=4)
CLEAN_UNHANDLED_DATA = st.dictionaries(st.text(SAFE_CHAR, max_size=10), JSON_CLEAN_VALUES, max_size=4)
# Hypothesis draws the same UUID again and again; a counter keeps most clean events new (the
# duplicates come from the other cases, and from test_a_replayed_notification_...).
FRESH = itertools.count(1)
CLEAN_EVENT_IDS = st.one_of(
    st.uuids().map(lambda u: f"{u}-{next(FRESH)}"), st.just(0).map(lambda _: 10**12 + next(FRESH)),
    st.uuids().map(lambda u: f"evt {u.hex} {next(FRESH)}"),
)
EVENT_IDS = st.one_of(
    st.uuids().map(str), st.uuids().map(str), st.text(ANY_CHAR, min_size=1, max_size=40),
    st.integers(-(10**12), 10**12), st.sampled_from(["", "  ", None, 1.5, True]), st.lists(st.integers(), max_size=1),
)


def notification_documents(draw, clean: bool, handled_only: bool = False) -> dict:
    """A JSON document and the tags of what it calls for; ``clean``: one the portal should accept."""
    tags = {"bad_envelope": set(), "handled": False, "bad_data": set(), "time": None, "data_null": False}
    document = {}
    name_kind = "handled" if handled_only else pick(draw, *["handled"] * 6, "unhandled", "unhandled", *(() if clean else ("bad",)))
    if name_kind == "handled":
        name = pick(draw, *HANDLED)
        document["event_name"] = draw(WS) + name + draw(WS)  # DRF trims it
        tags["handled"] = True
    elif name_kind == "unhandled":
        document["event_name"] = draw(UNHANDLED_NAMES)
    else:
        bad_name = draw(BAD_NAMES)
        if bad_name is not ABSENT:
            document["event_name"] = bad_name
        tags["bad_envelope"].add("event_name")

    # The envelope's data may be anything but null (it is checked only for a handled event).
    data_kind = "ok" if clean else pick(draw, *["ok"] * 10, "absent", "not-object")
    if data_kind == "absent":
        if tags["handled"]:
            tags["bad_data"].add("data")
    elif data_kind == "not-object":
        document["data"] = draw(NOT_DATA)
        if document["data"] is None:
            tags["data_null"] = True
        elif tags["handled"]:
            tags["bad_data"].add("data")
    elif tags["handled"]:
        document["data"], bad = node_values(draw, DATA_SHAPES[name], "data", True, clean)
        tags["bad_data"] = bad
    else:
        document["data"] = draw(CLEAN_UNHANDLED_DATA if clean else UNHANDLED_DATA)

    id_key = pick(draw, *EVENT_ID_KEYS, "id", "id", *(() if clean and not one_in(draw, 5) else (None,)))
    if id_key:
        document[id_key] = draw(CLEAN_EVENT_IDS if clean else EVENT_IDS)
    for key in EVENT_TIME_KEYS:
        if one_in(draw, 4):
            v = draw(time_values(True, plus_ok=False, clean=clean))
            document[key] = v.value
            if tags["time"] is None and v.value not in (None, ""):
                tags["time"] = (key, v.verdict)
    for key, value in draw(CLEAN_EXTRA_MEMBERS if clean else EXTRA_MEMBERS).items():
        if key not in ("event_name", "data", *EVENT_ID_KEYS, *EVENT_TIME_KEYS):
            document[key] = value
    if draw(DEPTH_CHANCE):  # arrays nested around MAX_JSON_DEPTH, kept as they are (not checked)
        levels, filled = draw(NEAR_DEPTH_LIMIT)
        if clean:  # accepted: at most MAX_JSON_DEPTH deep, the top object counted
            levels = min(levels, MAX_JSON_DEPTH - 1 - filled)
        document["deep"] = nested_list(levels, filled)
    return document, tags


RAW_NOTIFICATION_BODIES = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([b"", b"[]", b"[1]", b'"x"', b"1", b"null", b"{", b'{"event_name": ', b"\xff\xfe{}", b"{}",
                     b'\xef\xbb\xbf{"event_name": "x", "data": {}}', b'{"event_name": "x", "data": {"a": NaN}}',
                     b'{"event_name": "x", "data": {"a": "\\ud800"}}', b'{"event_name": "x", "data": {}, "id": "\\u0000"}',
                     b'{"event_name": "x.y", "data": {"total": 1e400}}', b'{"event_name": "x.y", "data": {"total": -1e400}, "id": 1}']),
    st.tuples(st.integers(1, 3000) | st.integers(800, 1000)).map(
        lambda t: b'{"event_name": "x.y", "data": {"a": ' + b"[" * t[0] + b"]" * t[0] + b"}}"
    ),
)


@st.composite
def notification_cases(draw) -> NotificationCase:
    clean = pick(draw, True, False)  # half the cases: events the portal should accept
    method = "POST" if not one_in(draw, 12) else draw(OTHER_METHODS)
    endpoint = pick(draw, *["current"] * 10, *["rotated"] * 2, *NOTIFICATION_ENDPOINTS)
    case = NotificationCase(method=method, endpoint=endpoint)
    if endpoint == "uuid-variant":
        case = replace(case, uuid_text=pick(draw, "upper", "hex", "braces", "urn"))
    elif endpoint == "malformed-uuid":
        case = replace(case, uuid_text=draw(MALFORMED_UUIDS))
    if not clean and one_in(draw, 30):
        case = replace(case, nest=draw(_integers(0, 150)))
    elif not clean and one_in(draw, 10):
        case = replace(case, raw_body=draw(RAW_NOTIFICATION_BODIES))
    else:
        document, tags = notification_documents(draw, clean)
        case = replace(
            case, document=document, bad_envelope=frozenset(tags["bad_envelope"]), handled=tags["handled"],
            bad_data=frozenset(tags["bad_data"]), time=tags["time"], data_null=tags["data_null"],
        )
        if not clean and document and one_in(draw, 15):  # a key given twice in the object
            key = pick(draw, *sorted(document, key=str))
            case = replace(case, repeat=(key, document[key] if pick(draw, True, False) else draw(JSON_SCALARS)))
    signature = pick(draw, *["text-key"] * 12, *["decoded-key"] * 3, *SIGNATURES)
    if clean:
        pad_to = draw(_integers(MAX_BODY - 100, MAX_BODY)) if one_in(draw, 10) else None
    else:
        pad_to = draw(PAD_SIZES) if one_in(draw, 15) else None
    case = replace(
        case,
        ensure_ascii=pick(draw, True, False),
        signature=signature,
        signature_text=draw(HEADER_TEXT) if signature == "malformed" else "",
        content_type=pick(draw, JSON_TYPE, JSON_TYPE, None) if not one_in(draw, 4) else draw(CONTENT_TYPES),
        content_length=draw(ODD_CONTENT_LENGTHS) if not clean and one_in(draw, 10) else None,
        pad_to=pad_to,
        headers=tuple(draw(EXTRA_HEADERS)),
    )
    if not clean and draw(CHUNKED_CHANCE):  # a chunked body sent without a Content-Length
        case = replace(case, content_length="", headers=(*(h for h in case.headers if h[0] != "Transfer-Encoding"),
                                                           ("Transfer-Encoding", "chunked")))
    return case


def stack_depth() -> int:
    frame, depth = sys._getframe(1), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def render_notification_body(case: NotificationCase) -> bytes:
    if case.nest is not None:
        levels = max(PYTHON_RECURSION_LIMIT - stack_depth() - case.nest, 1)
        body = b'{"event_name": "x.y", "id": "nest-%d", "data": {"a": %s}}' % (case.nest, nested(levels))
    elif case.raw_body is not None:
        body = case.raw_body
    else:
        ascii_only = case.ensure_ascii or _has_surrogate(json.dumps(case.document))
        text = json.dumps(case.document, ensure_ascii=ascii_only)
        if case.repeat is not None:
            key, value = case.repeat
            text = text[:-1] + ", " + json.dumps(key, ensure_ascii=ascii_only) + ": " + json.dumps(value, ensure_ascii=ascii_only) + "}"
        body = text.encode("utf-8", "surrogatepass")
    if case.pad_to is not None and case.pad_to > len(body):
        body += b" " * (case.pad_to - len(body))
    return body


def sign(body: bytes, key: str, *, decoded: bool = False) -> str:
    key_bytes = base64.b64decode(key) if decoded else key.encode()
    return base64.b64encode(hmac.new(key_bytes, body, hashlib.sha256).digest()).decode()


def signature_header(case: NotificationCase, body: bytes) -> str | None:
    key = ROTATED_SIGNING_KEY if case.endpoint == "rotated" else SIGNING_KEY
    return {
        "text-key": lambda: sign(body, key),
        "decoded-key": lambda: sign(body, key, decoded=True),
        "padded": lambda: " " + sign(body, key) + "  ",
        "previous-key": lambda: sign(body, PREVIOUS_SIGNING_KEY),
        "wrong-key": lambda: sign(body, WRONG_SIGNING_KEY),
        "tampered": lambda: sign(body + b" ", key),
        "unpadded": lambda: sign(body, key).rstrip("="),
        "malformed": lambda: case.signature_text,
        "empty": lambda: "",
        "missing": lambda: None,
    }[case.signature]()


def expect_notification(case: NotificationCase, body: bytes) -> Expect:
    if case.method.upper() != "POST":
        return Expect({405}, why="method")
    # The body is read before the endpoint is looked up (so a 404 / 410 record keeps it).
    if chunked_without_length(case, body):
        return Expect({411}, why="chunked")
    if announced_too_big(case) or len(effective_body(body, case.content_length)) > MAX_BODY:
        return Expect({413}, why="size")
    answer = NOTIFICATION_ENDPOINTS[case.endpoint][1]
    if answer in (404, 410):
        return Expect({answer}, why="endpoint")
    proves = SIGNATURES[case.signature]
    if case.signature == "previous-key":
        proves = case.endpoint == "rotated"
    if answer == 401 or not proves or effective_body(body, case.content_length) != body:
        return Expect({401}, why="signature")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body_refused("not UTF-8")
    # The whole document is checked before the envelope is read.
    document = read_json_body(text)
    if document.refused:
        return body_refused(document.refused)
    return _expect_event(case)


def _expect_event(case: NotificationCase) -> Expect:
    if case.raw_body is not None or case.nest is not None:
        return Expect(None, why="raw body")
    # Every bad field at once: a handled event's data and event time together, and (decided with
    # the fuzz's fixes) the event time beside the envelope's errors. An event of a type the
    # portal does not act on is acknowledged whatever its data and metadata look like ("data":
    # null included).
    time_bad = {case.time[0]} if case.time and case.time[1] == "invalid" else set()
    envelope = set(case.bad_envelope) | ({"data"} if case.data_null and (case.bad_envelope or case.handled) else set())
    if envelope:
        return Expect({400}, envelope | time_bad, "envelope")
    if not case.handled:
        return Expect({200}, why="valid")
    if case.bad_data or time_bad:
        return Expect({400}, set(case.bad_data) | time_bad, "data" if case.bad_data else "time")
    if case.time and case.time[1] == "unknown":
        return Expect(None, why="unknown time")
    return Expect({200, 202}, why="valid")


# =================================================================================================
# Running a case and checking every property
# =================================================================================================


class Contract:
    """The portal's own OpenAPI schema, as served at ``api-schema``."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.app = OpenAPI.from_dict(document)
        rejection = {**document["components"]["schemas"]["Rejection"], "components": document["components"]}
        self.rejection = OAS30Validator(rejection)

    def check(self, path_pattern: str, method: str, response) -> None:
        request = MockRequest("http://testserver", method.lower(), path_pattern, path_pattern=path_pattern)
        answer = MockResponse(response.content, status_code=response.status_code,
                              headers=dict(response.headers), content_type=response.get("Content-Type", ""))
        try:
            self.app.validate_response(request, answer)
        except OperationNotFound:
            # OpenAPI documents the operations a path has, so it cannot document the 405 of a
            # method the path does not take: that answer is held to the Rejection schema
            # instead (and a HEAD answer has no body to hold to anything).
            assert response.status_code == 405, f"{method} answered {response.status_code}, undocumented"
            if method.upper() != "HEAD":
                errors = [error.message for error in self.rejection.iter_errors(response.json())]
                assert not errors, f"the 405 answer is not a Rejection: {errors}"


_CONTRACT: list[Contract] = []


@pytest.fixture
def contract(client) -> Contract:
    if not _CONTRACT:
        served = client.get(reverse("api-schema") + "?format=json", HTTP_ACCEPT=JSON_TYPE)
        assert served.status_code == 200, served.content[:300]
        _CONTRACT.append(Contract(json.loads(served.content)))
    return _CONTRACT[0]


@pytest.fixture
def conversion_endpoints() -> dict[str, ConversionEndpoint]:
    now = datetime.now(timezone.utc)
    endpoints = {
        "main": ConversionEndpoint.objects.create(channel_id=11),
        "rotated": ConversionEndpoint.objects.create(
            channel_id=12, previous_secret="the-previous-secret-of-channel-12", previous_secret_expires_at=now + timedelta(days=1)
        ),
        "expired": ConversionEndpoint.objects.create(
            channel_id=13, previous_secret="the-expired-secret-of-channel-13", previous_secret_expires_at=now - timedelta(seconds=1)
        ),
        "disabled": ConversionEndpoint.objects.create(channel_id=14, is_enabled=False),
    }
    return endpoints


@pytest.fixture
def notification_endpoints() -> dict[str, NotificationEndpoint]:
    now = datetime.now(timezone.utc)
    return {
        "main": NotificationEndpoint.objects.create(external_id="main", secret=SIGNING_KEY),
        "rotated": NotificationEndpoint.objects.create(
            external_id="rotated", secret=ROTATED_SIGNING_KEY,
            previous_secret=PREVIOUS_SIGNING_KEY, previous_secret_expires_at=now + timedelta(days=1),
        ),
        "keyless": NotificationEndpoint.objects.create(external_id="keyless", secret=None),
        "disabled": NotificationEndpoint.objects.create(external_id="disabled", secret=SIGNING_KEY, is_enabled=False),
    }


def _uuid_segment(endpoint, variant: str, malformed: str) -> str:
    if endpoint is None:
        return malformed or str(uuidlib.uuid4())
    return {"upper": str(endpoint.uuid).upper(), "hex": endpoint.uuid.hex, "braces": "{%s}" % endpoint.uuid,
            "urn": endpoint.uuid.urn}.get(variant, str(endpoint.uuid))


def _wrong(secret: str, miss: str, text: str) -> str:
    wrong = {"drop-last": secret[:-1], "add-char": secret + "x", "upper": secret.upper(), "prefix": "x" + secret,
             "first-ten": secret[:10], "space": secret + " ", "random": text}[miss]
    return wrong if wrong != secret else secret + "x"


def conversion_segment(case: ConversionCase, endpoints) -> str:
    endpoint = endpoints.get(CONVERSION_ENDPOINTS[case.endpoint][0])
    return _uuid_segment(endpoint, case.uuid_text, case.uuid_text if case.endpoint == "malformed-uuid" else "")


def conversion_path(case: ConversionCase, endpoints, segment: str | None = None) -> str:
    which, secret_name, _ = CONVERSION_ENDPOINTS[case.endpoint]
    endpoint = endpoints.get(which)
    segment = conversion_segment(case, endpoints) if segment is None else segment
    source = endpoint or endpoints["main"]
    secret = source.secret if secret_name in ("secret", "wrong") else source.previous_secret
    if secret_name == "wrong":
        secret = _wrong(secret, case.secret_miss, case.secret_text)
    query = render_query(case)
    path = f"/hooks/sparkfly/channels/{quote(segment, safe='')}/{quote(secret, safe='')}/conversions"
    return path + (f"?{query}" if query else "")


def send(client, method: str, path: str, body: bytes, content_type: str | None, content_length: str | None, headers):
    """One request in its own savepoint, as the view's statements run in production (autocommit):
    a statement PostgreSQL refuses must not poison the test's transaction for the next case."""
    meta = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers}
    meta["CONTENT_TYPE"] = content_type or ""
    if content_length is not None:
        meta["CONTENT_LENGTH"] = content_length
    # Hypothesis raises the recursion limit while it runs a test; the portal serves under
    # Python's default, and how deep a JSON body may nest before something breaks depends on it.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(PYTHON_RECURSION_LIMIT)
    try:
        with transaction.atomic():
            return client.generic(method, path, data=body, content_type=content_type or "", **meta)
    except Exception as exc:  # the test client re-raises what the view did not handle: a 500
        where = [f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.name}" for frame in traceback.extract_tb(exc.__traceback__)]
        raise AssertionError(f"500 Internal Server Error: {exc!r:.300}\n  at " + "\n  at ".join(where[-6:])) from exc
    finally:
        sys.setrecursionlimit(limit)


COUNTED = {"requests": InboundRequest, "redemptions": Redemption, "notifications": Notification, "jobs": ProcrastinateJob}


def snapshot() -> dict[str, int]:
    """The last id of each table a request may add to (one query: this runs twice a case)."""
    tables = [connection.ops.quote_name(model._meta.db_table) for model in COUNTED.values()]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"(SELECT coalesce(max(id), 0) FROM {table})" for table in tables))
        return dict(zip(COUNTED, cursor.fetchone()))


def added_since(before: dict[str, int]) -> dict[str, int]:
    """How many rows each table gained since ``before``."""
    tables = [connection.ops.quote_name(model._meta.db_table) for model in COUNTED.values()]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"(SELECT count(*) FROM {table} WHERE id > %s)" for table in tables), list(before.values()))
        return dict(zip(COUNTED, cursor.fetchone()))


def _mismatch(expect: Expect, status: int, answer, body: bytes) -> str | None:
    """How the answer differs from what ``expect`` calls for, or None."""
    if status == 400 and answer is not None:
        named = set(answer["errors"])
        if "body" in named:
            # _flatten names an error without a name "body": so is a key "" given twice.
            named.add("")
        missing = expect.fields - named
        if missing:
            return f"the 400 does not name {sorted(missing)} ({expect.why}): {answer}"
        for name, message in expect.messages.items():
            if message not in answer["errors"].get(name, []):
                return f"the 400 does not say {name!r} {message} ({expect.why}): {answer}"
    if expect.statuses is not None and status not in expect.statuses:
        return f"expected {sorted(expect.statuses)} ({expect.why}), got {status}: {body[:400]!r}"
    return None


def check_answer(response, expect: Expect, *, method: str, path_pattern: str, contract: Contract, before: dict, kind: str,
                 secrets: list[str], segment: str | None = None):
    """The properties every request is held to. ``segment``: the endpoint UUID as the path gave
    it."""
    status = response.status_code
    body = response.content
    assert status < 500, f"server error {status}: {body[:300]!r}"
    assert response["Content-Type"] == JSON_TYPE, response["Content-Type"]
    answer = response.json() if method.upper() != "HEAD" else None
    try:
        contract.check(path_pattern, method, response)
    except ResponseNotFound:
        pytest.fail(f"{method} answered {status}, a status its operation does not document")

    if 400 <= status < 500 and answer is not None:
        assert isinstance(answer.get("detail"), str) and answer["detail"].strip(), answer
        if status == 400:
            errors = answer.get("errors")
            assert isinstance(errors, dict) and errors, f"a 400 without errors: {answer}"
            # (A name may be "": a query string can name a field so, "=1&=2".)
            assert all(messages and all(isinstance(m, str) and m for m in messages) for messages in errors.values()), errors
    mismatch = _mismatch(expect, status, answer, body)
    assert not mismatch, mismatch

    added = added_since(before)
    assert added["requests"] == 1, f"{added['requests']} InboundRequests recorded, not exactly one"
    recorded = InboundRequest.objects.get(pk__gt=before["requests"])
    assert (recorded.kind, recorded.status_code, recorded.method) == (kind, status, method.upper()[:10])
    stored = json.dumps([recorded.endpoint_uuid, recorded.headers, recorded.query, recorded.errors])
    for secret in secrets:
        assert secret not in stored, "an endpoint secret was stored with the request"
    assert set(recorded.headers) <= set(inbound.KEPT_HEADERS), f"headers kept beyond the audit list: {recorded.headers}"
    if segment is not None:
        # Recorded as given, a NUL (%00) cleaned (PostgreSQL's text cannot hold one).
        assert recorded.endpoint_uuid == cleaned(segment[:100]), (recorded.endpoint_uuid, segment)

    records, task = ("redemptions", FORWARD) if kind == "conversion" else ("notifications", PROCESS)
    created, jobs = added[records], added["jobs"]
    if status >= 300:
        assert recorded.outcome == "rejected"
        if answer is not None:
            # The rejection is recorded as answered, cleaned: a NUL-named field is kept too.
            assert recorded.errors == cleaned(answer), (recorded.errors, answer)
        assert (created, jobs) == (0, 0), "a rejected request created a record or queued a job"
        return recorded, None
    item = answer["redemption" if kind == "conversion" else "notification"]
    link = recorded.redemption_id if kind == "conversion" else recorded.notification_id
    assert link == item["id"]
    if answer["duplicate"]:
        assert status == 200 and recorded.outcome == "duplicate"
        assert (created, jobs) == (0, 0), "a duplicate created a record or queued a job"
    elif kind == "notification" and status == 200:
        assert recorded.outcome == "ignored" and item["state"] == UNHANDLED_STATE, (recorded.outcome, item["state"])
        assert (created, jobs) == (1, 0), "an ignored notification queued a job"
    else:
        assert status == 202 and recorded.outcome == "accepted"
        assert (created, jobs) == (1, 1), "a new record without exactly one job"
        id_key = "redemption_id" if kind == "conversion" else "notification_id"
        assert ProcrastinateJob.objects.filter(task_name=task, args={id_key: item["id"]}).count() == 1
    return recorded, answer


def all_secrets(endpoints) -> list[str]:
    return [secret for endpoint in endpoints.values() for secret in (endpoint.secret, endpoint.previous_secret) if secret]


def check_size_recorded(case, recorded) -> None:
    """An announced size over the limit is recorded, clamped to what the integer column holds."""
    if recorded.status_code == 413 and announced_too_big(case):
        assert recorded.body_size == min(int(case.content_length), PG_INT_MAX), recorded.body_size


def check_documented_request(contract: Contract, case: ConversionCase, path: str, body: bytes) -> None:
    """An accepted POST is one the schema's request admits (query values optional, the body
    optional, ids text or numbers, offer_ids text or an array, xid / status / sf_uid / sf_ac
    text or numbers)."""
    query = path.partition("?")[2]
    content_type = media_type(case.content_type) if read_body_of(case, body).strip() else ""
    request = MockRequest(
        "http://testserver", "post", path.split("?")[0], path_pattern=CONVERSION_PATH,
        view_args={"endpoint_uuid": "u", "secret": "s"}, args=dict(parse_qsl(query, keep_blank_values=True)),
        data=read_body_of(case, body) or None, content_type=content_type or FORM_TYPE,  # the portal reads no type as a form
    )
    try:
        contract.app.validate_request(request)
    except OpenAPIError as exc:
        errors = list(getattr(exc.__cause__, "schema_errors", None) or [])
        described = [f"{'/'.join(map(str, error.path))}: {error.message}" for error in errors] or [repr(exc)]
        pytest.fail(f"an accepted POST the schema's request does not admit: {described}")


def read_body_of(case, body: bytes) -> bytes:
    return effective_body(body, case.content_length)


def run_conversion(client, endpoints, contract, case: ConversionCase):
    segment = conversion_segment(case, endpoints)  # (an unknown endpoint's is a new UUID each time)
    path = conversion_path(case, endpoints, segment)
    body = render_conversion_body(case)
    expect = expect_conversion(case, body)
    before = snapshot()
    response = send(client, case.method, path, body, case.content_type, case.content_length, case.headers)
    recorded, answer = check_answer(response, expect, method=case.method, path_pattern=CONVERSION_PATH, contract=contract,
                                    before=before, kind="conversion", secrets=all_secrets(endpoints),
                                    segment=segment)
    check_size_recorded(case, recorded)
    if answer is not None and expect.values:
        check_redemption_values(expect.values, answer["redemption"])
    if 200 <= response.status_code < 300 and case.method == "POST":
        check_documented_request(contract, case, path, body)
    return response, expect


def check_redemption_values(final: dict[str, V], item: dict) -> None:
    """A valid callback is recorded with the values it carried."""
    assert item["credential_id"] == final["credential_id"].number
    offer = final["offer_id"].number if "offer_id" in final else final["offer_ids"].number
    assert item["offer_id"] == offer
    moment = datetime.fromisoformat(item["redeemed_at"].replace("Z", "+00:00"))
    assert moment == final["redeemed_at"].instant


def run_notification(client, endpoints, contract, case: NotificationCase):
    which = NOTIFICATION_ENDPOINTS[case.endpoint][0]
    endpoint = endpoints.get(which)
    segment = _uuid_segment(endpoint, case.uuid_text, case.uuid_text if case.endpoint == "malformed-uuid" else "")
    body = render_notification_body(case)
    signature = signature_header(case, body)
    headers = case.headers + ((("X-Hmac-Sha256-Signature", signature),) if signature is not None else ())
    expect = expect_notification(case, body)
    before = snapshot()
    response = send(client, case.method, f"/hooks/sparkfly/notifications/{quote(segment, safe='')}", body,
                    case.content_type, case.content_length, headers)
    recorded, answer = check_answer(response, expect, method=case.method, path_pattern=NOTIFICATION_PATH, contract=contract,
                                    before=before, kind="notification", secrets=all_secrets(endpoints), segment=segment)
    check_size_recorded(case, recorded)
    if answer is not None and case.document is not None and expect.statuses is not None:
        assert answer["notification"]["event_name"] == str(case.document["event_name"]).strip() or answer["duplicate"]
    return response, expect


# =================================================================================================
# The fuzz
# =================================================================================================

VALID_CALLBACK = (
    Occurrence("credential_id", V("501", "valid", number=501), "query"),
    Occurrence("offer_id", V("7", "valid", number=7), "query"),
    Occurrence("redeemed_at", V("2024-05-01T12:00:00Z", "valid", instant=datetime(2024, 5, 1, 12, tzinfo=timezone.utc)), "query"),
)


def _in_body(occurrences):
    return tuple(replace(o, place="body") for o in occurrences)


def test_conversion_callback_fuzz(client, conversion_endpoints, contract):
    ran = {"generated": 0, "explicit": 0}
    answers: collections.Counter = collections.Counter()
    refusals: collections.Counter = collections.Counter()  # the 400s, by the oracle's reason

    @FUZZ
    @given(case=conversion_cases())
    @example(case=seed(ConversionCase(occurrences=VALID_CALLBACK)))
    @example(case=seed(ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE, occurrences=_in_body(VALID_CALLBACK))))
    # --- fixed: each once broke a property; held now to the answer decided (see the module's doc)
    @example(case=fixed(
        ConversionCase(endpoint="malformed-uuid", uuid_text="\x00", occurrences=VALID_CALLBACK),
        "a NUL (%00) in the endpoint UUID segment: 503, InboundRequest.endpoint_uuid could not hold it; now 404, "
        "recorded with U+FFFD for the NUL"))
    @example(case=fixed(
        ConversionCase(occurrences=(*VALID_CALLBACK, Occurrence("k\x00", V("v", "valid"), "query"))),
        "a NUL in an extra query key (k%00=v): 503, Redemption.conv_ids (jsonb) could not hold it; now 400 naming 'k\\x00'"))
    @example(case=fixed(
        ConversionCase(occurrences=(Occurrence("k\x00", V("1", "valid"), "query"), Occurrence("k\x00", V("2", "valid"), "query"))),
        "a NUL key given twice: 503, the rejection's errors (jsonb) could not hold it; now 400 naming it, recorded cleaned"))
    @example(case=fixed(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE,
                       occurrences=(*VALID_CALLBACK, Occurrence("\ud800", V("v", "valid"), "body"))),
        "a lone surrogate (\\ud800) as a JSON key: 503, Redemption.conv_ids (jsonb) could not hold it; now 400 'body'"))
    @example(case=fixed(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE, content_length=str(PG_INT_MAX + 1),
                       occurrences=_in_body(VALID_CALLBACK)),
        "Content-Length over 2**31-1: 503 instead of 413, InboundRequest.body_size (integer) overflowed; now 413, "
        "recorded as 2**31-1"))
    @example(case=fixed(
        ConversionCase(occurrences=(*VALID_CALLBACK[::2], Occurrence("ref", V("\x00", "invalid"), "query"))),
        "offer_id missing and a NUL conv_ids value: the 400 named offer_id only; now the NUL is refused before any "
        "field is read, and the 400 names 'ref'"))
    @example(case=fixed(
        ConversionCase(occurrences=(*VALID_CALLBACK[::2], Occurrence("ref", V("v" * (MAX_CONV_ID_VALUE + 1), "invalid"), "query"))),
        "offer_id missing and a conv_ids value over 1000 characters: the 400 named offer_id only; now both"))
    @example(case=fixed(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE, occurrences=(
            *_in_body(VALID_CALLBACK),
            Occurrence("a", V([1], "not_text"), "body"), Occurrence("b", V({"c": 1}, "not_text"), "body"))),
        "two extra keys with non-text values: the 400 named the first only; now both"))
    @example(case=fixed(
        ConversionCase(method="POST", body_format="json", content_type="application/json; charset=utf-8",
                       occurrences=_in_body(VALID_CALLBACK)),
        "a JSON body sent as 'application/json; charset=utf-8': 415; now read by its media type"))
    # --- decided: explicit examples of the semantics decided with the fixes
    @example(case=decided(
        ConversionCase(method="POST", body_format="form", content_type="application/x-www-form-urlencoded; charset=UTF-8",
                       occurrences=_in_body(VALID_CALLBACK)),
        "a form with a charset parameter is read"))
    @example(case=decided(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE,
                       occurrences=(*_in_body(VALID_CALLBACK), Occurrence("ref", V(float("nan"), "valid"), "body"))),
        "NaN in a JSON body: 400 'body'"))
    @example(case=decided(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE,
                       occurrences=(*_in_body(VALID_CALLBACK), Occurrence("offer_id", V("7", "valid", number=7), "body"))),
        "a key repeated in a JSON object, with the same value: 400 'body'"))
    @example(case=decided(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE,
                       occurrences=(*_in_body(VALID_CALLBACK), Occurrence("deep", V(nested_list(MAX_JSON_DEPTH, False), "not_text"), "body"))),
        "nested MAX_JSON_DEPTH + 1 levels: 400 'body'"))
    @example(case=decided(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE,
                       occurrences=(*_in_body(VALID_CALLBACK), Occurrence("deep", V(nested_list(MAX_JSON_DEPTH - 1, False), "not_text"), "body"))),
        "nested exactly MAX_JSON_DEPTH levels (empty innermost): read, and the non-scalar conv_ids value named"))
    @example(case=decided(
        ConversionCase(occurrences=(*VALID_CALLBACK[:2], Occurrence("redeemed_at", V("2024-05-01t12:00:00z", "valid",
                       instant=datetime(2024, 5, 1, 12, tzinfo=timezone.utc)), "query"))),
        "RFC 3339's lower-case t and z"))
    @example(case=decided(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE, occurrences=(
            Occurrence("credential_id", V("501", "valid", number=501), "query"), Occurrence("credential_id", V(501, "valid", number=501), "body"),
            Occurrence("offer_id", V(7, "valid", number=7), "body"), VALID_CALLBACK[2])),
        "JSON 501 in the body and '501' in the query: one value"))
    @example(case=decided(
        ConversionCase(occurrences=VALID_CALLBACK, raw_query="=x"),
        "an empty key: named 'conv_ids'"))
    @example(case=decided(
        ConversionCase(occurrences=(Occurrence("credential_id", V("0" * 19 + "501", "invalid"), "query"), *VALID_CALLBACK[1:])),
        "(second review) an id written in more than 19 digits, leading zeros or not: 400"))
    @example(case=decided(
        ConversionCase(endpoint="disabled", method="POST", body_format="json", content_type=JSON_TYPE,
                       occurrences=_in_body(VALID_CALLBACK), content_length=str(MAX_BODY + 1)),
        "(second review) the body is read before the endpoint is looked up: 413 before 410"))
    @example(case=decided(
        ConversionCase(occurrences=(Occurrence("credential_id", V("x", "invalid"), "query"), *VALID_CALLBACK[1:],
                                    Occurrence("ref", V("v" * (MAX_CONV_ID_VALUE + 1), "invalid"), "query"),
                                    Occurrence("tags", V(["a"], "not_text"), "body")),
                       method="POST", body_format="json", content_type=JSON_TYPE),
        "every bad field at once: a bad credential_id, a conv_ids value too long, a non-scalar one"))
    def fuzz(case: ConversionCase) -> None:
        response, expect = run_conversion(client, conversion_endpoints, contract, case)
        ran["explicit" if case.note else "generated"] += 1
        answers[response.status_code] += 1
        if response.status_code == 400:
            refusals[expect.why if expect.statuses else "undecided"] += 1
        answers["duplicate"] += response.status_code == 200

    fuzz()
    assert ran["generated"] >= FUZZ_EXAMPLES, f"only {ran['generated']} cases ran"
    print(f"\nconversion callbacks: {ran['generated']} generated cases, answered {dict(sorted(answers.items(), key=str))}, "
          f"400s by reason {dict(refusals.most_common())}")
    # The cases reach every answer, the deeper ones included (not only 404s and 400s). At least
    # once each: how often a rare one (415) comes up varies with hypothesis's generation phases.
    assert all(answers[status] >= 1 for status in (200, 202, 400, 404, 405, 410, 411, 413, 415)), answers


POINTS_REDEEMED_DATA = {
    "points_redeemed": 100,
    "member": {"id": 1, "identifier": "m-1", "enrollment": {"id": 7}},
    "reward_state": {"id": 3, "offer_state_id": 9, "credential_identifier": "ABC123"},
}


def _unhandled(event_id: str, data) -> NotificationCase:
    return NotificationCase(document={"event_name": "sf.transaction.completed", "id": event_id, "data": data})


def test_notification_fuzz(client, notification_endpoints, contract):
    ran = {"generated": 0, "explicit": 0}
    answers: collections.Counter = collections.Counter()
    refusals: collections.Counter = collections.Counter()  # the 400s, by the oracle's reason

    @FUZZ
    @given(case=notification_cases())
    @example(case=seed(NotificationCase(document={"event_name": "loyalty.enrollment.points.redeemed", "id": "evt-fuzz-1",
                                                  "created_at": "2024-05-01T12:00:00Z", "data": POINTS_REDEEMED_DATA}, handled=True)))
    # --- fixed: each once broke a property; held now to the answer decided (see the module's doc)
    @example(case=fixed(
        NotificationCase(nest=60),
        "a signed unhandled event whose data nests as deep as json.loads allows (some 900 levels): 500, "
        "RecursionError while psycopg serialized Notification.payload; now 400 'body' (over MAX_JSON_DEPTH)"))
    @example(case=fixed(
        NotificationCase(raw_body=b'{"event_name": "x.y", "id": "nan-1", "data": {"a": NaN}}'),
        "NaN in a signed event: 503, Notification.payload (jsonb) refused it; now 400 'body'"))
    @example(case=fixed(_unhandled("nul-1", {"a": "\x00"}), "a \\u0000 in a signed event: 503, jsonb refused it; now 400 'body'"))
    @example(case=fixed(_unhandled("surrogate-1", {"a": "\ud800"}),
                        "a lone surrogate in a signed event: 503, jsonb refused it; now 400 'body'"))
    @example(case=fixed(
        NotificationCase(document={"event_name": "x.y", "id": "n\x00", "data": {}}),
        "a NUL in the event id: 503, Notification.event_id could not hold it; now 400 'body'"))
    @example(case=fixed(
        NotificationCase(endpoint="malformed-uuid", uuid_text="\x00", document={"event_name": "x.y", "data": {}}),
        "a NUL (%00) in the endpoint UUID segment: 503, InboundRequest.endpoint_uuid could not hold it; now 404, "
        "recorded with U+FFFD for the NUL"))
    @example(case=fixed(
        NotificationCase(document={"event_name": "x.y", "data": {}}, content_length=str(PG_INT_MAX + 1)),
        "Content-Length over 2**31-1: 503 instead of 413, InboundRequest.body_size (integer) overflowed; now 413, "
        "recorded as 2**31-1"))
    @example(case=fixed(
        NotificationCase(document={"event_name": "sf.member.created", "data": {"member": {"id": "x"}}, "created_at": "yesterday"},
                         handled=True, bad_data=frozenset({"data.member.id"}), time=("created_at", "invalid")),
        "a bad member id and an unparseable created_at: the 400 named data.member.id only; now both"))
    # --- decided: explicit examples of the semantics decided with the fixes
    @example(case=decided(
        NotificationCase(document={"event_name": "x.y", "id": "repeat-1", "data": {}}, repeat=("id", "repeat-1")),
        "a key repeated in the event object, with the same value: 400 'body'"))
    @example(case=decided(
        NotificationCase(document={"event_name": "x.y", "id": "deep-33", "data": {}, "deep": nested_list(MAX_JSON_DEPTH, False)}),
        "nested MAX_JSON_DEPTH + 1 levels: 400 'body'"))
    @example(case=decided(
        NotificationCase(document={"event_name": "x.y", "id": "deep-32", "data": {}, "deep": nested_list(MAX_JSON_DEPTH - 1, False)}),
        "nested exactly MAX_JSON_DEPTH levels (empty innermost): recorded (200)"))
    @example(case=decided(
        NotificationCase(document={"event_name": "sf.member.created", "id": "lower-tz-1", "created_at": "2024-05-01t12:00:00z",
                                   "data": {"member": {"id": 5}}}, handled=True, time=("created_at", "valid")),
        "RFC 3339's lower-case t and z in the event time"))
    @example(case=decided(
        NotificationCase(document={"event_name": "x.y", "id": "charset-1", "data": {}}, content_type="application/json; charset=utf-8"),
        "a charset parameter on the Content-Type"))
    @example(case=decided(
        NotificationCase(document={"event_name": "sf.transaction.completed", "id": "unhandled-1", "timestamp": 1714564800,
                                   "created_at": "yesterday"}, time=("timestamp", "invalid")),
        "(second review) an event the portal does not act on: 200 whatever its data (absent here) and times"))
    @example(case=decided(
        NotificationCase(document={"event_name": "sf.member.created", "id": "no-data-1"}, handled=True, bad_data=frozenset({"data"})),
        "(second review) a handled event without data: 400 naming data"))
    @example(case=decided(
        NotificationCase(document={"event_name": "loyalty.enrollment.points.redeemed", "id": "free-1", "data": {
            **POINTS_REDEEMED_DATA, "points_redeemed": 0, "reward_state": {**POINTS_REDEEMED_DATA["reward_state"], "issued_point_value": 0}}},
            handled=True),
        "(second review) a free reward: 0 points"))
    @example(case=decided(
        NotificationCase(raw_body=b'{"event_name": "x.y", "id": "big-1", "data": {"total": 1e400}}'),
        "(second review) a JSON number beyond a double: 400 'body'"))
    @example(case=decided(
        NotificationCase(endpoint="unknown-uuid", document={"event_name": "x.y", "data": {}}, content_length=str(MAX_BODY + 1)),
        "(second review) the body is read before the endpoint is looked up: 413 before 404"))
    def fuzz(case: NotificationCase) -> None:
        response, expect = run_notification(client, notification_endpoints, contract, case)
        ran["explicit" if case.note else "generated"] += 1
        answers[response.status_code] += 1
        if response.status_code == 400:
            refusals[expect.why if expect.statuses else "undecided"] += 1
        answers["duplicate"] += response.status_code == 200 and response.json()["duplicate"]

    fuzz()
    assert ran["generated"] >= FUZZ_EXAMPLES, f"only {ran['generated']} cases ran"
    print(f"\nevent notifications: {ran['generated']} generated cases, answered {dict(sorted(answers.items(), key=str))}, "
          f"400s by reason {dict(refusals.most_common())}")
    assert all(answers[status] >= 1 for status in (200, 202, 400, 401, 404, 405, 410, 411, 413)), answers


# =================================================================================================
# Replays: the same callback or event, sent again and again
# =================================================================================================

REPLAY_FORMS = ("get-z", "get-offset", "get-unencoded-plus", "get-rails", "post-form", "post-json", "get-extras")


def _replay_case(credential: int, offer: int, moment: datetime, form: str, extra: str) -> ConversionCase:
    """One way of writing the same redemption (the same credential, offer and instant)."""
    offset = 150  # +02:30
    local = moment + timedelta(minutes=offset)
    written = {
        "get-offset": _write_time(local.replace(tzinfo=None), offset, "offset", moment.microsecond),
        "get-unencoded-plus": _write_time(local.replace(tzinfo=None), offset, "offset", moment.microsecond),
        "get-rails": _write_time(moment.replace(tzinfo=None), None, "rails", moment.microsecond),
    }.get(form, _write_time(moment.replace(tzinfo=None), 0, "z", moment.microsecond))
    time_v = V(written, "valid", raw_plus=form == "get-unencoded-plus", instant=moment)
    values = [("credential_id", V(str(credential), "valid", number=credential)), ("offer_id", V(str(offer), "valid", number=offer)),
              ("redeemed_at", time_v)]
    if form == "get-extras":
        values += [("xid", V("", "blank")), ("store_id", V("", "blank")), ("ref", V(extra, "valid"))]
    if form == "post-json":
        values[:2] = [("credential_id", V(credential, "valid", number=credential)), ("offer_id", V(offer, "valid", number=offer))]
        return ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE,
                              occurrences=tuple(Occurrence(k, v, "body") for k, v in values))
    if form == "post-form":
        return ConversionCase(method="POST", body_format="form", content_type=FORM_TYPE,
                              occurrences=tuple(Occurrence(k, v, "body") for k, v in values))
    return ConversionCase(occurrences=tuple(Occurrence(k, v, "query") for k, v in values))


def test_a_replayed_callback_is_recorded_and_queued_once(client, conversion_endpoints, contract):
    from sparkfly_sync.events import redemption_event_id

    ran = {"replays": 0}

    @REPLAYS
    @given(
        credential=VALID_ID, offer=VALID_ID,
        moment=st.datetimes(min_value=VALID_FROM, max_value=VALID_TO).map(lambda d: d.replace(tzinfo=timezone.utc)),
        forms=st.lists(st.sampled_from(REPLAY_FORMS), min_size=2, max_size=8),
        extra=st.text(SAFE_CHAR, max_size=10),
    )
    def replay(credential, offer, moment, forms, extra):
        key = redemption_event_id(credential_id=credential, offer_id=offer, redeemed_at=moment)
        seen = Redemption.objects.filter(dedup_key=key).exists()  # hypothesis may draw a pair again
        answers = []
        for n, form in enumerate(forms):
            case = _replay_case(credential, offer, moment, form, extra)
            body = render_conversion_body(case)
            path = conversion_path(case, conversion_endpoints)
            before = snapshot()
            response = send(client, case.method, path, body, case.content_type, None, ())
            check_answer(response, Expect({200} if seen or n else {202}, why="replay"), method=case.method,
                         path_pattern=CONVERSION_PATH, contract=contract, before=before, kind="conversion",
                         secrets=all_secrets(conversion_endpoints))
            answers.append(response.json())
        redemption = Redemption.objects.get(dedup_key=key)
        assert {answer["redemption"]["id"] for answer in answers} == {redemption.pk}
        assert [answer["duplicate"] for answer in answers] == [seen] + [True] * (len(forms) - 1)
        assert ProcrastinateJob.objects.filter(task_name=FORWARD, args={"redemption_id": redemption.pk}).count() == 1
        assert redemption.requests.filter(outcome="duplicate").count() >= len(forms) - 1
        ran["replays"] += 1

    replay()
    assert ran["replays"] >= REPLAYS.max_examples


def test_a_replayed_notification_is_recorded_and_queued_once(client, notification_endpoints, contract):
    ran = {"replays": 0}

    @REPLAYS
    @given(
        document=st.composite(lambda draw: notification_documents(draw, clean=True, handled_only=True)[0])(),
        times=st.integers(2, 8),
        rewrite=st.lists(st.sampled_from(["same", "indent", "sorted", "ascii", "decoded-key"]), min_size=8, max_size=8),
    )
    def replay(document, times, rewrite):
        # Each time written otherwise (the signature covers those bytes): the event's id decides.
        event_id = f"replay-{next(FRESH)}"
        document = {**document, "id": event_id}
        for n in range(times):
            how = rewrite[n]
            text = json.dumps(document, indent=2 if how == "indent" else None, sort_keys=how == "sorted",
                              ensure_ascii=how == "ascii")
            case = NotificationCase(raw_body=text.encode(), signature="decoded-key" if how == "decoded-key" else "text-key")
            body = render_notification_body(case)
            before = snapshot()
            response = send(client, "POST", f"/hooks/sparkfly/notifications/{notification_endpoints['main'].uuid}", body,
                            JSON_TYPE, None, (("X-Hmac-Sha256-Signature", signature_header(case, body)),))
            check_answer(response, Expect({200} if n else {202}, why="replay"), method="POST",
                         path_pattern=NOTIFICATION_PATH, contract=contract, before=before, kind="notification",
                         secrets=all_secrets(notification_endpoints))
            assert response.json()["duplicate"] is bool(n)
        notification = Notification.objects.get(event_id=event_id)
        assert ProcrastinateJob.objects.filter(task_name=PROCESS, args={"notification_id": notification.pk}).count() == 1
        assert notification.requests.count() == times
        ran["replays"] += 1

    replay()
    assert ran["replays"] >= REPLAYS.max_examples


# =================================================================================================
# Findings now fixed (these were strict xfails)
# =================================================================================================


def test_a_json_body_with_a_charset_parameter_is_read(client, conversion_endpoints):
    """Fixed: webhooks._conversion_values compared the whole Content-Type header with
    'application/json', so a JSON body sent as 'application/json; charset=utf-8' was answered 415."""
    case = ConversionCase(method="POST", body_format="json", content_type="application/json; charset=utf-8",
                          occurrences=_in_body(VALID_CALLBACK))
    answer = client.post(conversion_path(case, conversion_endpoints), data=render_conversion_body(case),
                         content_type=case.content_type)
    assert answer.status_code == 202, answer.content


@pytest.mark.parametrize(
    ("placing", "values"),
    [
        ("body", {"credential_id": "1", "offer_id": "2", "redeemed_at": "2024-05-01T12:00:00Z"}),
        ("query", {"credential_id": "1", "offer_id": "2", "redeemed_at": "2024-05-01T12:00:00Z"}),
        ("body", {"credential_id": 1, "offer_ids": [2], "redeemed_at": "2024-05-01T12:00:00Z"}),
        ("body", {"credential_id": 1, "offer_id": 2, "offer_ids": "2,3", "store_id": 4, "redeemed_at": "2024-05-01T12:00:00Z"}),
    ],
    ids=["values-in-a-json-body", "values-in-the-query-only", "json-numbers-and-an-array", "json-numbers-and-a-list-text"],
)
def test_the_documented_request_admits_what_the_portal_accepts(client, conversion_endpoints, contract, placing, values):
    """Fixed: the schema made credential_id and redeemed_at required query parameters of the POST,
    and its body required, with every value a string, yet the portal accepted (202) each of these."""
    case = ConversionCase(
        method="POST", body_format="json" if placing == "body" else "none", content_type=JSON_TYPE if placing == "body" else None,
        occurrences=tuple(Occurrence(key, V(value, "valid"), placing) for key, value in values.items()),
    )
    path = conversion_path(case, conversion_endpoints)
    body = render_conversion_body(case)
    assert client.post(path, data=body, content_type=case.content_type or "").status_code == 202
    request = MockRequest(
        "http://testserver", "post", path.split("?")[0], path_pattern=CONVERSION_PATH,
        view_args={"endpoint_uuid": "u", "secret": "s"}, args=dict(parse_qsl(path.partition("?")[2])),
        data=body or None, content_type=case.content_type or "",
    )
    contract.app.validate_request(request)


# =================================================================================================
# The fuzz's last five findings, fixed in 793be7e: regression guards
# =================================================================================================

FIXED_FINDINGS = """
Found by the fuzz after the second review (20b8968), fixed in 793be7e; each example below once
broke a property and is now held to the decided answer:
1. JSON nested exactly MAX_JSON_DEPTH levels whose innermost array held a value was refused
   (400 "body": webhooks._unstorable_json counted the values as a level too).
2. A JSON number for xid / status / sf_uid / sf_ac was accepted (202), but the POST request
   schema documented those fields as strings only.
3. A bad envelope and a bad event time: the 400 named the envelope's fields only.
4. An event the portal does not act on, with ``"data": null``: 400 "data" instead of 200.
5. A chunked body without a Content-Length: 411, a status neither operation's schema documented.
"""
EXPLICIT = settings(FUZZ, phases=[Phase.explicit])  # only the examples: the fuzz above draws the cases


def test_fixed_findings_conversion(client, conversion_endpoints, contract):
    @EXPLICIT
    @given(case=conversion_cases())
    @example(case=fixed(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE, occurrences=(
            *_in_body(VALID_CALLBACK), Occurrence("deep", V(nested_list(MAX_JSON_DEPTH - 1, True), "not_text"), "body"))),
        "a conv_ids value nested to level MAX_JSON_DEPTH holding a 1: the 400 named 'body' (too deep) instead of "
        "the non-scalar value 'deep' (FIXED_FINDINGS 1)"))
    @example(case=fixed(
        ConversionCase(method="POST", body_format="json", content_type=JSON_TYPE,
                       occurrences=(*_in_body(VALID_CALLBACK), Occurrence("xid", V(5, "valid"), "body"))),
        "xid as the JSON number 5: accepted (202), but the schema documented xid as a string only (FIXED_FINDINGS 2)"))
    @example(case=fixed(
        ConversionCase(occurrences=VALID_CALLBACK, content_length="", headers=(("Transfer-Encoding", "chunked"),)),
        "a chunked GET without a Content-Length: 411, a status the schema did not document (FIXED_FINDINGS 5)"))
    def guard(case: ConversionCase) -> None:
        run_conversion(client, conversion_endpoints, contract, case)

    guard()


def test_fixed_findings_notification(client, notification_endpoints, contract):
    @EXPLICIT
    @given(case=notification_cases())
    @example(case=fixed(
        NotificationCase(document={"event_name": "x.y", "id": "deep-32-filled", "data": {},
                                   "deep": nested_list(MAX_JSON_DEPTH - 1, True)}),
        "an unhandled event with a member nested to level MAX_JSON_DEPTH holding a 1: 400 'body' (too deep) "
        "instead of 200 (FIXED_FINDINGS 1)"))
    @example(case=fixed(
        NotificationCase(document={"data": {}, "created_at": "2999-01-01T00:00:00Z"},
                         bad_envelope=frozenset({"event_name"}), time=("created_at", "invalid")),
        "no event_name and a far-future created_at: the 400 named event_name only (fixed in 2e4cd61, undone by "
        "20b8968; FIXED_FINDINGS 3)"))
    @example(case=fixed(
        NotificationCase(document={"event_name": "sf.transaction.completed", "id": "null-data-1", "data": None}, data_null=True),
        "an event the portal does not act on, with data null: 400 'data: This field may not be null' where absent "
        "data or data [1] was acknowledged (FIXED_FINDINGS 4)"))
    @example(case=fixed(
        NotificationCase(document={"event_name": "x.y", "id": "chunked-1", "data": {}}, content_length="",
                         headers=(("Transfer-Encoding", "chunked"),)),
        "a chunked event without a Content-Length: 411, a status the schema did not document (FIXED_FINDINGS 5)"))
    def guard(case: NotificationCase) -> None:
        run_notification(client, notification_endpoints, contract, case)

    guard()
