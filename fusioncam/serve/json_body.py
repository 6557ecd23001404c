"""Request bodies read as JSON with a specific reason when they are not: where, and what (NaN and Infinity named).

KServe reads JSON bodies with orjson and answers "Unrecognized request format: unexpected character" for any
problem; a client that sent Python's `json.dumps` of a NaN needs to hear that NaN is not JSON, and where it is.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .request_errors import BadRequest

_NON_JSON_NUMBER = re.compile(rb"-?(NaN|Infinity|inf|nan)")


def parse_json_body(body: bytes, what: str) -> Any:
    """The JSON value of `body`; BadRequest naming the position and, for NaN/Infinity literals, the problem."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not JSON: {json_problem(body, exc)}") from None


def json_problem(body: bytes, exc: orjson.JSONDecodeError) -> str:
    """One sentence: what is wrong at which line, column and byte."""
    literal = (exc.pos > 0 and body[exc.pos - 1:exc.pos] == b"-" and _NON_JSON_NUMBER.match(body, exc.pos - 1)) \
        or _NON_JSON_NUMBER.match(body, exc.pos)
    if literal:
        start = literal.start()
        line = body.count(b"\n", 0, start) + 1
        column = start - (body.rfind(b"\n", 0, start) + 1) + 1
        return (f"{literal.group(0).decode()} at line {line} column {column} (byte {start}) is not a JSON number "
                f"(JSON has no NaN or Infinity; Python's json.dumps writes them unless allow_nan=False): send finite "
                f"numbers")
    where = f"line {exc.lineno} column {exc.colno} (byte {exc.pos})"
    if not body.strip():
        return "the body is empty"
    return f"{exc.msg} at {where}"
