"""The device routes' request bodies, validated without pydantic (issue 15).

A worker that serves only devices validates every check-in and report here instead of
with the pydantic models of :mod:`owner.device_schemas` (which the FastAPI routes keep
for the API documentation), so it never loads pydantic. The rules are those models'
in pydantic's lax mode, the answers the same (``tests/owner/test_device_body.py`` runs
many bodies through both):

* :func:`checkin_body` reads a check-in as ``TypeAdapter(CheckinIn).validate_json``
  does: the JSON parsed as pydantic's parser (jiter) parses it, with its error messages
  (:func:`loads`); extra fields ignored.
* :func:`report_body` validates a report already parsed (``json.loads``, or the raw
  bytes of a body that is not JSON) as ``TypeAdapter(ReportIn).validate_python`` does;
  extra fields refused.

Each returns the body, or the list of errors as pydantic's ``ValidationError.errors``
has them (``type``, ``loc``, ``msg``, ``input``, ``ctx``; the check-in's without
``input`` and ``ctx``, as the endpoint answers them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jiter

from owner.checkin import APPLY_STATES, HEALTH, Observation

#: The pattern of an image digest (``booted_digest``, ``staged_digest``).
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

Error = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportBody:
    """What the device reports after its reboot (``ReportIn``)."""

    booted_digest: str | None = None
    revision: int | None = None
    healthy: bool = True
    detail: str = ""


# ------------------------------------------------------------------------------ JSON


class JsonInvalid(ValueError):
    """Not JSON as pydantic's parser reads it; ``str()`` is its message (with the line
    and column)."""


def loads(data: bytes) -> Any:
    """``data`` parsed as pydantic parses JSON: by jiter, the parser pydantic-core is
    built on (``NaN`` and ``Infinity`` taken, nesting limited to 200, the last of
    duplicate keys kept, numbers of 4,300 digits and more refused), with its messages
    (:class:`JsonInvalid`) for what it refuses."""
    try:
        return jiter.from_json(data, allow_inf_nan=True)
    except ValueError as exc:
        raise JsonInvalid(str(exc)) from None


# ------------------------------------------------------------------------------ fields

#: What pydantic parses as an integer's text at most (Python's own limit).
_MAX_INT_CHARS = 4300
#: What Rust's ``str::trim`` strips (``char::is_whitespace``; Python's ``str.strip()``
#: strips U+001C to U+001F too).
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_I64_MIN = float(-(2**63))
_I64_MAX = float(2**63)
_FALSE = frozenset({"0", "f", "n", "no", "off", "false"})
_TRUE = frozenset({"1", "t", "y", "on", "yes", "true"})


class _Invalid(Exception):
    """A field's value is refused: pydantic's error ``kind`` (type, message, context)."""

    def __init__(self, kind: str, msg: str, ctx: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.kind = kind
        self.msg = msg
        self.ctx = ctx


_INT_PARSING = ("int_parsing", "Input should be a valid integer, unable to parse string as an integer")
_INT_SIZE = ("int_parsing_size", "Unable to parse input string as an integer, exceeded maximum size")


def _text(value: str) -> None:
    """A string pydantic can read (Python's strings may hold lone surrogates, from a
    ``\\ud800`` escape that ``json.loads`` takes)."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise _Invalid(
                "string_unicode",
                "Input should be a valid string, unable to parse raw data as a unicode string",
            ) from None


_LEADING_DIGITS = re.compile(r"0*([0-9]*)", re.ASCII)
_INT_DIGITS = re.compile(r"([+-]?)0*([0-9]+)", re.ASCII)


def _parse_int(text: str) -> int | None:
    """``text`` as an integer (an optional sign, then digits), else None."""
    found = _INT_DIGITS.fullmatch(text)
    if found is None or len(found.group(2)) > _MAX_INT_CHARS:
        return None
    return int(found.group(1) + found.group(2))


def _str_as_int(text: str) -> int:
    """pydantic's integer from a string: surrounding whitespace (Rust's) ignored, a
    fraction of zeros dropped, or single underscores between digits; more than 4,300
    significant leading digits (after a minus sign) is ``int_parsing_size``."""
    _text(text)
    text = text.strip(_RUST_WHITESPACE)
    leading = _LEADING_DIGITS.match(text[1:] if text.startswith("-") else text)
    if leading is not None and len(leading.group(1)) > _MAX_INT_CHARS:
        raise _Invalid(*_INT_SIZE)
    number = _parse_int(text)
    if number is not None:
        return number
    dot = text.find(".")
    if dot >= 0 and dot + 1 < len(text) and text[dot + 1 :].strip("0") == "":
        text = text[:dot]
        number = _parse_int(text)
        if number is not None:
            return number
    if "_" in text and not (text.startswith("_") or text.endswith("_") or "__" in text):
        number = _parse_int(text.replace("_", ""))
        if number is not None:
            return number
    raise _Invalid(*_INT_PARSING)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _Invalid("finite_number", "Input should be a finite number")
        if value % 1 != 0:
            raise _Invalid(
                "int_from_float", "Input should be a valid integer, got a number with a fractional part"
            )
        if not _I64_MIN < value < _I64_MAX:
            raise _Invalid(*_INT_SIZE)
        return int(value)
    if isinstance(value, str):
        return _str_as_int(value)
    raise _Invalid("int_type", "Input should be a valid integer")


def _int(ge: int | None = None, le: int | None = None, *, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        number = _as_int(value)
        if ge is not None and number < ge:
            raise _Invalid("greater_than_equal", f"Input should be greater than or equal to {ge}", {"ge": ge})
        if le is not None and number > le:
            raise _Invalid("less_than_equal", f"Input should be less than or equal to {le}", {"le": le})
        return number

    return check


def _str(
    *, max_length: int | None = None, digest: bool = False, optional: bool = True
) -> Callable[[Any], Any]:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise _Invalid("string_type", "Input should be a valid string")
        _text(value)
        if max_length is not None and len(value) > max_length:
            raise _Invalid(
                "string_too_long",
                f"String should have at most {max_length} characters",
                {"max_length": max_length},
            )
        if digest and _DIGEST.fullmatch(value) is None:
            raise _Invalid(
                "string_pattern_mismatch",
                f"String should match pattern '{DIGEST_PATTERN}'",
                {"pattern": DIGEST_PATTERN},
            )
        return value

    return check


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value in (0, 1):
            return bool(value)
        if -(2**63) <= value < 2**63:
            raise _Invalid("bool_parsing", "Input should be a valid boolean, unable to interpret input")
        raise _Invalid("bool_type", "Input should be a valid boolean")
    if isinstance(value, float):
        if value in (0.0, 1.0):
            return bool(value)
        if value % 1 == 0 and _I64_MIN < value < _I64_MAX:
            raise _Invalid("bool_parsing", "Input should be a valid boolean, unable to interpret input")
        raise _Invalid("bool_type", "Input should be a valid boolean")
    if isinstance(value, str):
        _text(value)
        lowered = value.lower() if value.isascii() else value
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise _Invalid("bool_parsing", "Input should be a valid boolean, unable to interpret input")
    raise _Invalid("bool_type", "Input should be a valid boolean")


def _literal(choices: tuple[str, ...]) -> Callable[[Any], Any]:
    expected = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"

    def check(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise _Invalid("literal_error", f"Input should be {expected}", {"expected": expected})

    return check


_REQUIRED = object()

#: CheckinIn's fields in their order: (name, default or _REQUIRED, check).
_CHECKIN: tuple[tuple[str, Any, Callable[[Any], Any]], ...] = (
    ("seq", _REQUIRED, _int(1, 2**62)),
    ("booted_image", None, _str(max_length=1024)),
    ("booted_digest", None, _str(digest=True)),
    ("staged_image", None, _str(max_length=1024)),
    ("staged_digest", None, _str(digest=True)),
    ("revision", None, _int(0, 2**31 - 1, optional=True)),
    ("generation", 0, _int(0, 2**31 - 1)),
    ("applied_revision", None, _int(0, 2**31 - 1, optional=True)),
    ("state", "none", _literal(APPLY_STATES)),
    ("health", "unknown", _literal(HEALTH)),
    ("error_step", None, _str(max_length=256)),
    ("error", None, _str(max_length=2000)),
    ("rolled_back", False, _bool),
    ("utc_offset", None, _int(-14 * 3600, 14 * 3600, optional=True)),
)

_REPORT: tuple[tuple[str, Any, Callable[[Any], Any]], ...] = (
    ("booted_digest", None, _str(digest=True)),
    ("revision", None, _int(0, optional=True)),
    ("healthy", True, _bool),
    ("detail", "", _str(max_length=4000, optional=False)),
)
_REPORT_FIELDS = frozenset(name for name, _, _ in _REPORT)


def _fields(
    value: Mapping[str, Any], fields: tuple[tuple[str, Any, Callable[[Any], Any]], ...], errors: list[Error]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, default, check in fields:
        if name not in value:
            if default is _REQUIRED:
                errors.append({"type": "missing", "loc": (name,), "msg": "Field required", "input": value})
            else:
                out[name] = default
            continue
        given = value[name]
        try:
            out[name] = check(given)
        except _Invalid as invalid:
            error: Error = {"type": invalid.kind, "loc": (name,), "msg": invalid.msg, "input": given}
            if invalid.ctx is not None:
                error["ctx"] = invalid.ctx
            errors.append(error)
    return out


def checkin_body(data: bytes) -> Observation | list[Error]:
    """The check-in in ``data``, or its errors (``type``, ``loc``, ``msg``)."""
    try:
        value = loads(data)
    except JsonInvalid as exc:
        return [{"type": "json_invalid", "loc": (), "msg": f"Invalid JSON: {exc}"}]
    if not isinstance(value, dict):
        return [{"type": "model_type", "loc": (), "msg": "Input should be an object"}]
    errors: list[Error] = []
    fields = _fields(value, _CHECKIN, errors)
    if errors:
        return [{"type": e["type"], "loc": e["loc"], "msg": e["msg"]} for e in errors]
    return Observation(**fields)


def report_body(value: Any) -> ReportBody | list[Error]:
    """The report ``value`` holds (parsed JSON, or the raw body), or its errors."""
    if not isinstance(value, dict):
        return [
            {
                "type": "model_attributes_type",
                "loc": (),
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": value,
            }
        ]
    errors: list[Error] = []
    fields = _fields(value, _REPORT, errors)
    for name, given in value.items():
        if name not in _REPORT_FIELDS:
            errors.append(
                {
                    "type": "extra_forbidden",
                    "loc": (name,),
                    "msg": "Extra inputs are not permitted",
                    "input": given,
                }
            )
    if errors:
        return errors
    return ReportBody(**fields)
