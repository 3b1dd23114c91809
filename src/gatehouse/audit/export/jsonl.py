"""JSON lines files: one event per line, appended to `path`, rotated by size.

When writing a batch would take the file past `max_bytes`, it is renamed `path.1` (the previous `path.1`
becomes `path.2`, and so on), keeping `keep` rotated files; the oldest is deleted. A batch is written whole
to one file and flushed (and fsync'ed, by default) before the cursor moves, so a crash can only repeat the
last batch, never lose it. `format = "ocsf"` writes OCSF API Activity records instead of the envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from gatehouse.audit.events import Event
from gatehouse.audit.export.base import Sink, SinkError, event_record
from gatehouse.audit.export.ocsf import to_ocsf
from gatehouse.audit.export.settings import JsonlSinkSettings


def formatter(fmt: str) -> Callable[[Event], dict[str, Any]]:
    return to_ocsf if fmt == "ocsf" else event_record


class RotatingFile:
    """An append-only file rotated by size. Not thread-safe: one writer."""

    def __init__(self, path: Path, max_bytes: int, keep: int, *, fsync: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync = fsync
        self._file: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open across writes
            self._size = self._file.tell()
        return self._file

    def write(self, data: bytes) -> None:
        f = self._open()
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self.rotate()
            f = self._open()
        f.write(data)
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())
        self._size += len(data)

    def rotate(self) -> None:
        self.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.rotated(self.keep)
        oldest.unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            source = self.rotated(n)
            if source.exists():
                source.rename(self.rotated(n + 1))
        if self.path.exists():
            self.path.rename(self.rotated(1))

    def rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
            self._size = 0


class JsonlSink(Sink):
    def __init__(self, name: str, settings: JsonlSinkSettings) -> None:
        super().__init__(name, settings.kinds)
        self.settings = settings
        self._format = formatter(settings.format)
        self._file = RotatingFile(settings.path, settings.max_bytes, settings.keep, fsync=settings.fsync)

    @property
    def destination(self) -> str:
        return f"{self.settings.format} file {self.settings.path}"

    async def send(self, events: Sequence[Event]) -> None:
        data = b"".join(orjson.dumps(self._format(e)) + b"\n" for e in events)
        try:
            await asyncio.to_thread(self._file.write, data)
        except OSError as exc:
            self._file.close()  # reopen (and re-measure) at the next attempt
            raise SinkError(f"cannot write {self.settings.path}: {exc.strerror or exc}") from exc

    async def close(self) -> None:
        self._file.close()
