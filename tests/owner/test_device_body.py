"""owner.device_body against pydantic: the same bodies give the same results.

The device endpoint validates check-ins and reports without pydantic; the FastAPI
routes (and the API documentation) keep the pydantic models of owner.device_schemas.
Many generated bodies (valid ones, each field of the wrong type, out of range, too long,
not matching its pattern, missing, extra, null, nested junk, JSON that is not an object,
JSON that is not JSON) go through both; the values or the error lists must be equal.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pydantic_core
import pytest
from pydantic import TypeAdapter, ValidationError

from fdo_server.device_app import json_response
from owner.checkin import Observation
from owner.device_api import CheckinAnswer, Desired
from owner.device_body import JsonInvalid, ReportBody, checkin_body, loads, report_body
from owner.device_schemas import CheckinIn, CheckinOut, ReportIn

_CHECKIN = TypeAdapter(CheckinIn)
_REPORT = TypeAdapter(ReportIn)

DIGEST = "sha256:" + "ab" * 32
FIELDS = [
    "seq",
    "booted_image",
    "booted_digest",
    "staged_image",
    "staged_digest",
    "revision",
    "generation",
    "applied_revision",
    "state",
    "health",
    "error_step",
    "error",
    "rolled_back",
    "utc_offset",
    "detail",
    "healthy",
    "extra",
    "_sa_hidden",
]
# JSON values (as text) that probe every field's rules.
VALUES = [
    *["0", "1", "-1", "-0", "7", "1.0", "1.5", "-0.0", "2.0", "1e3", "1E-2", "1e400", "-1e400"],
    *["2147483647", "2147483648", "4611686018427387904", "4611686018427387905", "50400", "-50400", "-50401"],
    *["9.2e18", "9.3e18", "1e20", "1" + "0" * 30, "-" + "9" * 40, "NaN", "Infinity", "-Infinity"],
    *["true", "false", "null", "[]", "{}", "[1,2]", '{"a":[null]}', "[[[[]]]]"],
    *['""', '" "', '"x"', '"1"', '" 7 "', '"\\u00a07"', '"\\u001c7"', '"+7"', '"-0"', '"007"', '"1_0"'],
    *['"_1"', '"1_"', '"1__0"', '"1.0"', '"1."', '".0"', '"1.00"', '"1_0.0"', '"1.0_0"', '"1e3"', '"0x10"'],
    *['"٣"', '"７"', '"' + "9" * 4300 + '"', '"' + "9" * 4301 + '"', '"NaN"', '"-' + "9" * 4301 + '"'],
    *['"+' + "9" * 4301 + '"', '"+' + "9" * 4300 + '"', '"' + "0" * 4301 + '"', '"' + "9" * 4301 + 'x"'],
    *[
        '"' + "9" * 4300 + '_9"',
        '"' + "9" * 4299 + '.0"',
        '"' + "9" * 4301 + '.00"',
        '"' + "1_0" * 1500 + '"',
    ],
    *['" ' + "9" * 4300 + ' "', '"' + "9" * 4300 + '.x"', '"-' + "0" * 4400 + '7"', '"' + "x" * 4301 + '"'],
    *['"true"', '"TRUE"', '"t"', '"Yes"', '"on"', '"off"', '"n"', '"0"', '" true"', '"maybe"'],
    *['"none"', '"applying"', '"staged"', '"applied"', '"failed"', '"rolled-back"', '"Applied"'],
    *['"healthy"', '"unhealthy"', '"unknown"'],
    *[
        f'"{DIGEST}"',
        f'"{DIGEST.upper()}"',
        f'"{DIGEST}\\n"',
        f'" {DIGEST}"',
        f'"{DIGEST[:-1]}"',
        '"sha256:"',
    ],
    *['"' + "x" * n + '"' for n in (256, 257, 1024, 1025, 2000, 2001, 4000, 4001)],
    *['"' + "é" * 257 + '"', '"' + "😀" * 2001 + '"', '"\\ud83d\\ude00"', '"\\ud800"', '"\\udc00x"'],
    *['"a\\u0000b"', '"\\n\\t\\"\\\\\\/"', '"é"'],
]
# Pieces of JSON (and of not quite JSON) for the parser.
TOKENS = [
    *[b"{", b"}", b"[", b"]", b",", b":", b'"a"', b'"seq"', b"1", b"-", b"0", b"01", b"-01", b"1.", b".5"],
    *[b"1e", b"1e+", b"1E-2", b"-0.0e0", b"1.5.3", b"true", b"tru", b"trux", b"fals", b"nul", b"null"],
    *[
        b"NaN",
        b"Na",
        b"Nope",
        b"-NaN",
        b"-Infinity",
        b"Infin",
        b"Infinityx",
        b"-I",
        b"+1",
        b"x",
        b"\xef\xbb\xbf",
    ],
    *[
        b" ",
        b"\n",
        b"\t",
        b"\r",
        b"\x0c",
        b'"\\u12"',
        b'"\\u12g4"',
        b'"\\ud800\\u0041"',
        b'"\\ud800\\',
        b'"\\ud800x"',
    ],
    *[
        b'"\\ud800\\n"',
        b'"\\udc00"',
        b'"\\x"',
        b'"\\',
        b'"',
        b'"\x01"',
        b'"\x7f"',
        b'"\xff"',
        b'"\xe9"',
        b'"\xc3\xa9"',
    ],
    *[
        b'"a\\nb\xc3"',
        b'"\\ud83d\\ude00\xff"',
        b'"\\t\xed\xa0\x80"',
        b"9" * 25,
        b"-" + b"9" * 4300,
        b"9" * 4301,
    ],
    *[b"1" * 4300 + b".5", b"1" * 4302 + b"e1", b"\\", b"/", b"//c"],
]


def _checkin_reference(data: bytes) -> Any:
    try:
        return _CHECKIN.validate_json(data).model_dump()
    except ValidationError as exc:
        return exc.errors(include_url=False, include_context=False, include_input=False)


def _checkin_ours(data: bytes) -> Any:
    body = checkin_body(data)
    return asdict(body) if isinstance(body, Observation) else body


def _report_reference(value: Any) -> Any:
    try:
        return _REPORT.validate_python(value, from_attributes=True).model_dump()
    except ValidationError as exc:
        return exc.errors(include_url=False)


def _report_ours(value: Any) -> Any:
    body = report_body(value)
    return asdict(body) if isinstance(body, ReportBody) else body


def _same(ours: Any, reference: Any) -> bool:
    """Equal, as the endpoint would render them (NaN equal to NaN, types compared)."""
    return repr(ours) == repr(reference) or (ours == reference and _typed(ours) == _typed(reference))


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _typed(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [_typed(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return (type(value).__name__, value)


def _object(rng: random.Random) -> bytes:
    members = [f'"{rng.choice(FIELDS)}":{rng.choice(VALUES)}' for _ in range(rng.randint(0, 6))]
    if rng.random() < 0.7:
        members.insert(0, '"seq":' + rng.choice(["1", "5", "0", '"3"', "true", "1.0", "null"]))
    if rng.random() < 0.3:
        rng.shuffle(members)
    space = rng.choice(["", " ", "\n  ", "\t"])
    return ("{" + space + ("," + space).join(members) + space + "}").encode()


def _mutated(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(out))
        choice = rng.random()
        if choice < 0.3 and out:
            del out[min(at, len(out) - 1)]
        elif choice < 0.6:
            out[at:at] = bytes([rng.choice(b'{}[],:"\\ \n\t0123456789-+.eEtfnuINa\xff\xc3\xa9\x00\x1f/ubx')])
        else:
            out = out[:at]
    return bytes(out)


def _soup(rng: random.Random) -> bytes:
    pieces = b"".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 8)))
    if rng.random() < 0.5:
        return b'{"seq":1,"x":' + pieces + (b"}" if rng.random() < 0.5 else b"")
    return pieces


def _nested() -> Iterator[bytes]:
    for depth in (1, 2, 198, 199, 200, 201, 202, 250):
        yield b'{"seq":1,"x":' + b"[" * depth + b"]" * depth + b"}"
        yield b'{"seq":1,"x":' + b"[" * depth + b"{}" + b"]" * depth + b"}"
        yield b'{"seq":1,"x":' + b"[" * depth + b" 1 " + b"]" * depth + b"}"
        yield b"[" * depth + b"]" * depth
        yield b'{"a":' * depth + b"1" + b"}" * depth
        yield b'{"seq":1,"x":' + b'[{"a":' * (depth // 2) + b"[]" + b"}]" * (depth // 2) + b"}"
        yield b'{"seq":1,"x":' + b"[" * depth


def _bodies(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.random()
        if kind < 0.55:
            data = _object(rng)
            if rng.random() < 0.35:
                data = _mutated(rng, data)
        else:
            data = _soup(rng)
        if rng.random() < 0.1:
            data = b" \n " + data + b"\r\n"
        yield data


def _fixed() -> Iterator[bytes]:
    yield json.dumps(
        {
            "seq": 7,
            "booted_image": "quay.io/x@" + DIGEST,
            "booted_digest": DIGEST,
            "staged_digest": None,
            "revision": 3,
            "generation": 2,
            "applied_revision": 3,
            "state": "applied",
            "health": "healthy",
            "rolled_back": False,
            "utc_offset": 3600,
            "newer_field": {"ignored": [1, 2]},
        }
    ).encode()
    yield from [b"", b" ", b"null", b"[]", b'"x"', b"1", b"{}", b'{"seq":1}', b'{"seq":1,"seq":"x"}']
    yield from [b'{"seq":"x","seq":2}', b'{"seq":1} x', b'{"seq":1,}', b"{not json", b'\xef\xbb\xbf{"seq":1}']
    yield from [
        b'{"seq":1,"error":"\xed\xa0\x80"}',
        b'{"seq":1,"error":"\\ud800"}',
        b'{"seq":1,"e":"\\ud800"}',
    ]
    yield from [b'{"seq":1,"error":"a\\n\xff"}', b'{\n"seq":\n1,\n\n"x": @}', b'{"seq":1,"x":1e400}']
    yield from _nested()


@pytest.mark.parametrize("seed", range(4))
def test_check_ins_validate_as_the_model_does(seed: int) -> None:
    bodies = list(_bodies(seed, 2500))
    if seed == 0:
        bodies += list(_fixed())
    mismatches = []
    for data in bodies:
        ours, reference = _checkin_ours(data), _checkin_reference(data)
        if not _same(ours, reference):
            mismatches.append((data[:200], ours, reference))
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("seed", range(4))
def test_reports_validate_as_the_model_does(seed: int) -> None:
    """The report as the endpoint validates it: ``json.loads``'s value, or the raw bytes."""
    values: list[Any] = [b'{"a":1}', b"", b"report", None, 1.5, [{"_sa_x": 1}], "report", float("nan")]
    for data in _bodies(seed + 100, 2500):
        try:
            values.append(json.loads(data))
        except ValueError:
            values.append(data)
    mismatches = []
    for value in values:
        ours, reference = _report_ours(value), _report_reference(value)
        if not _same(ours, reference):
            mismatches.append((repr(value)[:200], ours, reference))
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("seed", range(2))
def test_json_parses_as_pydantic_parses_it(seed: int) -> None:
    """:func:`owner.device_body.loads` against pydantic's own parser (``from_json``):
    the same values (nested ones too, which the check-in ignores) or the same message."""
    bodies = [*_bodies(seed + 200, 1500), *_fixed()]
    mismatches = []
    for data in bodies:
        try:
            reference: Any = pydantic_core.from_json(data, allow_inf_nan=True)
        except ValueError as exc:
            reference = ("invalid", str(exc))
        try:
            ours: Any = loads(data)
        except JsonInvalid as exc:
            ours = ("invalid", str(exc))
        if not _same(ours, reference):
            mismatches.append((data[:200], ours, reference))
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize(
    "desired",
    [
        None,
        Desired(revision=3, generation=0, image="quay.io/x@" + DIGEST, assignment="AAEC"),
        Desired(revision=2**31 - 1, generation=5, image='é/"quoted"\\\n\t\x7f\u2028😀', assignment=""),
    ],
)
def test_check_in_answers_serialise_as_the_model_does(desired: Desired | None) -> None:
    answer = CheckinAnswer("none" if desired is None else "apply", 300, "fdc1.1." + "A" * 43, desired)
    model = CheckinOut.model_validate(answer.content())
    assert json_response(200, answer.content()).body == model.model_dump_json(exclude_none=True).encode()
