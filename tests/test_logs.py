"""Item 1: one escaping rule for every log line (quart_iot/logs.py): no client-supplied text
reaches a log line unescaped, whoever logs it."""

import io
import logging
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from quart_iot.logs import FORMAT, EscapingFormatter, escape, format_exception
from tests.server import Server, running_server

FORGED = "2026-01-01 00:00:00,000 INFO [-] quart_iot.audit: audit: DELETE aa-bb-cc-dd-ee-ff"


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text, spaces and punctuation: ok", "plain text, spaces and punctuation: ok"),
        ("déjà vu 設定 🙂", "déjà vu 設定 🙂"),  # printable stays as it is
        ("a\nb\r\nc", r"a\nb\r\nc"),
        ("tab\there", r"tab\there"),
        ("\x1b[31mred\x1b[0m", r"\x1b[31mred\x1b[0m"),  # no escape sequence reaches a terminal
        ("line\u2028separator\u2029para\x85nel", r"line\u2028separator\u2029para\x85nel"),
        ("nul\x00 del\x7f nbsp\xa0", r"nul\x00 del\x7f nbsp\xa0"),
        ("bidi \u202eevil", r"bidi \u202eevil"),
        ("lone \ud800 surrogate", r"lone \ud800 surrogate"),
    ],
)
def test_escape_writes_every_unprintable_character_as_its_escape(text: str, escaped: str) -> None:
    assert escape(text) == escaped


def formatted(record: logging.LogRecord) -> str:
    return EscapingFormatter("%(levelname)s %(name)s: %(message)s").format(record)


def record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("quart_iot.x", logging.INFO, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_a_record_is_one_line_whatever_its_message_and_arguments_hold() -> None:
    line = formatted(record("audit: %s by %s", f"PUT x\n{FORGED}", "sub:a\rb"))
    assert "\n" not in line
    assert "\r" not in line
    assert line == rf"INFO quart_iot.x: audit: PUT x\n{FORGED} by sub:a\rb"
    assert formatted(record(f"no arguments\n{FORGED}")).count("\n") == 0


def test_other_handlers_get_the_record_unchanged() -> None:
    original = record("%s", "a\nb")
    formatted(original)
    assert (original.msg, original.args, original.getMessage()) == ("%s", ("a\nb",), "a\nb")


def test_a_traceback_keeps_its_lines_and_escapes_the_messages_in_it() -> None:
    try:
        try:
            raise KeyError(f"x\n{FORGED}")
        except KeyError as cause:
            raise ValueError(f"crit: x\n{FORGED}") from cause
    except ValueError as error:
        text = formatted(record("unexpected error", exc_info=(type(error), error, None)))
    lines = text.splitlines()
    assert lines[0] == "INFO quart_iot.x: unexpected error"
    assert not [line for line in lines if line.startswith(FORGED[:10])], text
    assert lines[1] == "Traceback (most recent call last):"
    assert rf"KeyError: 'x\n{FORGED}'" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines[-1] == rf"ValueError: crit: x\n{FORGED}"
    assert any(line.startswith('  File "') and __file__ in line for line in lines)


def during_another() -> None:
    try:
        int("k")
    except ValueError:
        error = RuntimeError("during")
        error.add_note("a note")
        raise error from None


def caused_by_another() -> None:
    try:
        int("k")
    except ValueError as error:
        raise OSError(2, "gone") from error


@pytest.mark.parametrize("fails", [during_another, caused_by_another])
def test_a_traceback_has_what_python_prints(fails: Callable[[], None]) -> None:
    """The same lines as traceback.format_exception for messages with nothing to escape."""
    with pytest.raises(Exception) as raised:  # noqa: PT011 - any: compared with traceback's
        fails()
    assert format_exception(raised.value) == "".join(traceback.format_exception(raised.value))
    assert format_exception(None) == "NoneType: None\n"


def test_logging_exception_outside_an_exception_and_a_broken_str() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter(FORMAT.replace(" [%(correlation_id)s]", "")))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.exception("no exception here")
        logger.error("broken", exc_info=Broken())
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert "NoneType: None" in stream.getvalue()
    assert "Broken: <exception str() failed>" in stream.getvalue()


def raw_request(server: Server, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_the_access_log_escapes_the_percent_decoded_path_with_access_control_off(
    tmp_path: Path,
) -> None:
    """hypercorn's access log writes the path percent-decoded: `%0A` was a newline, and an
    anonymous request wrote a line of its choosing (a forged audit record)."""
    forged = FORGED.replace(" ", "%20")
    with running_server(tmp_path, LOG_LEVEL="INFO") as server:
        answer = raw_request(server, f"/api/x%0A{forged}%1B[2J%E2%80%A8")
        assert answer.startswith(b"HTTP/1.1 404")
        server.stop()
        logged = server.stderr()
    lines = logged.splitlines()
    assert not [line for line in lines if line.startswith(FORGED[:10])], logged
    [access] = [line for line in lines if "hypercorn.access" in line and "/api/x" in line]
    assert rf'"GET /api/x\n{FORGED}\x1b[2J\u2028 1.1" 404' in access
    # hypercorn's error log goes through the same handler (our format, the same rule).
    assert [line for line in lines if " INFO [-] hypercorn.error: Running on " in line]
