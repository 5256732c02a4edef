"""fdo_server.logs.log_fields and log_access: the line they write themselves is the line
logging would write, and anything else that would see the record still gets it."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdo_server import logs
from fdo_server.logs import ACCESS_LOGGER, FIELDS, JsonFormatter, log_access, log_fields

#: A fixed clock for both paths (LogRecord reads time.time on 3.11 and 3.12, time_ns after).
NOW = 1_780_000_000.25


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)
    monkeypatch.setattr(time, "time_ns", lambda: int(NOW * 1e9))


class Recording(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


Logging = tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]


@pytest.fixture
def json_log() -> Iterator[Logging]:
    """A logger of its own (not propagating to the root) with the services' JSON handler."""
    logger = logging.getLogger("test.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    handler = logs._JsonHandler(stream)
    handler.setFormatter(JsonFormatter("rendezvous"))
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)
    logger.filters.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def passes(record: logging.LogRecord) -> bool:
    return True


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
#: Field names other than the line's own (a field of the same name would replace it).
field_names = st.text(min_size=1, max_size=10).filter(
    lambda k: k not in {"ts", "level", "logger", "message", "service"}
)
fields_strategy = st.dictionaries(
    field_names,
    st.one_of(
        scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2)
    ),
    max_size=8,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=fields_strategy, args=st.tuples(st.text(max_size=10), st.integers(0, 255)))
def test_direct_line_is_the_line_logging_writes(
    fixed_clock: None, json_log: Logging, fields: dict[str, Any], args: tuple[str, int]
) -> None:
    """Whatever the fields, the line written without a LogRecord is the one the handler
    writes for the record (a filter that lets everything through sends it the usual way)."""
    logger, out, _ = json_log
    out.seek(0)
    out.truncate()
    log_fields(logger, logging.INFO, fields, __file__, "%s message %d", *args)
    logger.addFilter(passes)
    log_fields(logger, logging.INFO, fields, __file__, "%s message %d", *args)
    logger.removeFilter(passes)
    direct, usual = out.getvalue().splitlines()
    assert direct == usual
    line = json.loads(direct)
    assert line["ts"] == "2026-05-28T20:26:40.250+00:00"
    assert line["message"] == f"{args[0]} message {args[1]}"
    assert (line["level"], line["logger"], line["service"]) == ("info", "test.logs", "rendezvous")


def test_the_message_is_not_formatted_without_arguments(fixed_clock: None, json_log: Logging) -> None:
    """As LogRecord.getMessage: ``msg % args`` only when there are arguments."""
    logger, out, _ = json_log
    log_fields(logger, logging.INFO, {"n": 1}, __file__, "100 % sure")
    assert json.loads(out.getvalue())["message"] == "100 % sure"


def test_another_handler_or_a_filter_gets_the_record(json_log: Logging) -> None:
    """A record that a second handler, a logger's or a handler's filter, or a handler's
    level would see goes through logging, as without log_fields."""
    logger, out, handler = json_log
    recording = Recording()
    logger.addHandler(recording)
    log_fields(logger, logging.INFO, {"event": "x"}, __file__, "one")
    assert [getattr(r, FIELDS) for r in recording.records] == [{"event": "x"}]
    assert json.loads(out.getvalue())["event"] == "x"
    logger.removeHandler(recording)

    logger.addFilter(lambda record: False)
    log_fields(logger, logging.INFO, {"event": "y"}, __file__, "two")
    logger.filters.clear()
    handler.addFilter(lambda record: False)
    log_fields(logger, logging.INFO, {"event": "z"}, __file__, "three")
    handler.filters.clear()
    handler.setLevel(logging.WARNING)
    log_fields(logger, logging.INFO, {"event": "w"}, __file__, "four")
    handler.setLevel(logging.NOTSET)
    logger.setLevel(logging.WARNING)
    log_fields(logger, logging.INFO, {"event": "v"}, __file__, "five")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["x"]


def test_a_failed_write_is_reported_by_the_handler(
    json_log: Logging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that fails is the handler's to report (handleError), as in emit; the
    caller goes on."""
    logger, _, handler = json_log

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    handler.setStream(Broken())
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)
    log_fields(logger, logging.INFO, {"event": "x"}, __file__, "%s", "lost")
    assert [(r.getMessage(), r.levelno) for r in reported] == [("lost", logging.INFO)]


def test_the_services_message_line_is_written_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The router's observer logs through log_fields, and as the services configure
    logging (the JSON handler on the root logger, nothing else) its line goes the direct way."""
    from fdo_server import metrics
    from transport.dispatch import MessageEvent

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "filters", [])
    monkeypatch.setattr(metrics.log, "handlers", [])
    monkeypatch.setattr(metrics.log, "filters", [])
    stream = io.StringIO()
    handler = logs._JsonHandler(stream)
    handler.setFormatter(JsonFormatter("owner"))
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    metrics.log.manager._clear_cache()  # type: ignore[attr-defined]
    assert logs._direct_handler(metrics.log, logging.INFO) is handler
    made: list[object] = []
    monkeypatch.setattr(metrics.log, "makeRecord", lambda *a, **k: made.append(a))
    event = MessageEvent(
        protocol="TO1", msg_type=30, error_code=None, guid=None, session=None, seconds=0.001,
        started=True, completed=False, session_seconds=None,
    )  # fmt: skip
    metrics.ServiceMetrics("owner").observe(event)
    line = json.loads(stream.getvalue())
    assert (line["event"], line["msg_type"], line["message"]) == ("fdo_message", 30, "TO1 message 30 ok")
    assert made == []
    metrics.log.manager._clear_cache()  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/fdo/101/msg/30", "/api/v1/registrations?token=secret&x=1"])
def test_direct_access_line_is_uvicorns(
    fixed_clock: None, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's access line written without a LogRecord is the one its logger writes,
    query string cut off."""
    access = logging.getLogger(ACCESS_LOGGER)
    for name, value in (("handlers", []), ("filters", []), ("propagate", False), ("level", logging.INFO)):
        monkeypatch.setattr(access, name, value)
    access.manager._clear_cache()  # type: ignore[attr-defined]
    out = io.StringIO()
    handler = logs._JsonHandler(out)
    handler.setFormatter(JsonFormatter("owner"))
    access.addHandler(handler)
    log_access(access, "127.0.0.1:40000", "POST", path, "1.1", 500)
    access.addFilter(passes)
    log_access(access, "127.0.0.1:40000", "POST", path, "1.1", 500)
    direct, usual = out.getvalue().splitlines()
    assert direct == usual
    line = json.loads(direct)
    assert "secret" not in direct and line["path"] == path.split("?")[0] + ("?" if "?" in path else "")
    assert line["message"] == f'127.0.0.1:40000 "POST {line["path"]} HTTP/1.1" 500'
    access.manager._clear_cache()  # type: ignore[attr-defined]


def test_uvicorns_access_logger_is_written_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the services' uvicorn log configuration the access line goes the direct way."""
    import logging.config

    for name in ("uvicorn", "uvicorn.error", ACCESS_LOGGER):
        logger = logging.getLogger(name)
        for attribute in ("propagate", "level", "disabled"):
            monkeypatch.setattr(logger, attribute, getattr(logger, attribute))
        for attribute in ("handlers", "filters"):  # copies: dictConfig changes the lists in place
            monkeypatch.setattr(logger, attribute, list(getattr(logger, attribute)))
    config = logs.uvicorn_log_config("owner")
    assert config is not None
    logging.config.dictConfig(config)
    access = logging.getLogger(ACCESS_LOGGER)
    assert type(logs._direct_handler(access, logging.INFO)) is logs._JsonHandler
    access.manager._clear_cache()  # type: ignore[attr-defined]
