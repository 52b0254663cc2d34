"""What a client sends to wait: `Prefer: wait=n` and `Last-Event-ID`, each read with a bound.

No number a client sends is converted without a length bound: Python refuses to convert more
than 4,300 digits (a 500 before these bounds).
"""

# RFC 9111 5.2 (delta-seconds, which RFC 7240's `wait` uses): a value too large to represent
# counts as 2^31. Ten digits or fewer always fit; any longer number is at least that.
DELTA_SECONDS_MAX = 2**31
_DELTA_DIGITS = 10
# Event ids are ours (`<epoch>-<sequence>`) or the store's; a longer one is none of them.
EVENT_ID_MAX_LENGTH = 64


def delta_seconds(text: str) -> int | None:
    """A delta-seconds value (ASCII digits only), capped at 2^31; None when malformed."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > _DELTA_DIGITS:
        return DELTA_SECONDS_MAX
    return min(int(text), DELTA_SECONDS_MAX)


def preferred_wait(values: list[str]) -> int:
    """`wait=<seconds>` from Prefer headers (RFC 7240): the first well-formed one, else 0."""
    for value in values:
        for preference in value.split(","):
            name, _, rest = preference.split(";")[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            seconds = delta_seconds(rest.strip().strip('"'))
            if seconds is not None:
                return seconds
    return 0


def last_event_id(value: str | None) -> str | None:
    """The id to resume after; "" (unknown: the stream says `reset`) when it cannot be one."""
    if value is None:
        return None
    value = value.strip()
    return value if len(value) <= EVENT_ID_MAX_LENGTH and value.isprintable() else ""
