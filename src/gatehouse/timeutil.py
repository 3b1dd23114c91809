"""Times at the edges: parse what people type (ISO 8601, or `30m`, `24h`, `7d` ago), print ISO 8601 UTC.
Inside, times are integer microseconds since the epoch."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, *, now_us: int | None = None) -> int:
    """Microseconds since the epoch. Raises ValueError with a message meant for people."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        now = now_us if now_us is not None else int(datetime.now(UTC).timestamp() * 1_000_000)
        return now - int(match.group(1)) * _UNIT_S[match.group(2)] * 1_000_000
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use ISO 8601 (2026-11-17T03:00) or an age like 30m, 24h, 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def parse_duration(text: str) -> int:
    """Seconds, from `90s`, `15m`, `12h`, `30d`, `2w`."""
    match = _RELATIVE.match(text.strip())
    if not match:
        raise ValueError(f"cannot read duration {text!r}: use a number and a unit, like 15m, 12h, 30d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return (
        datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
