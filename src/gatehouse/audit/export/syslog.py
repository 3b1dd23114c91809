"""Syslog (RFC 5424) over UDP (RFC 5426), TCP with octet-counting framing (RFC 6587) or TLS (RFC 5425).

One message per event:

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID id="..." seq="..." ...] BOM{"seq":...}

PRI = facility * 8 + severity, the severity following the decision (allow: informational, pending:
notice, deny: warning, error: error); MSGID is the event kind; the structured-data element carries the
envelope (id, seq, kind, decision, actors, session, resource, hash); MSG is the whole event as compact JSON.

Syslog has no acknowledgements: over TCP and TLS a batch counts as delivered once the kernel accepted it,
over UDP once it was sent. A closed connection is noticed and re-opened before the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from gatehouse.audit.events import Event
from gatehouse.audit.export.base import Sink, SinkError, event_record
from gatehouse.audit.export.settings import FACILITIES, SyslogSinkSettings

BOM = b"\xef\xbb\xbf"
SEVERITIES = {"allow": 6, "pending": 5, "deny": 4, "error": 3}
NILVALUE = "-"

# Structured-data parameters: name in the SD element -> how to read it from the event.
_SD_PARAMS = (
    ("id", "id"),
    ("seq", "seq"),
    ("kind", "kind"),
    ("decision", "decision"),
    ("user", "actor_user"),
    ("agent", "actor_agent"),
    ("token", "actor_token"),
    ("onBehalfOf", "on_behalf_of"),
    ("workspace", "workspace"),
    ("session", "session"),
    ("parent", "parent"),
    ("resource", "resource"),
    ("prevHash", "prev_hash"),
    ("hash", "hash"),
)


def sd_escape(value: str) -> str:
    """PARAM-VALUE escaping (RFC 5424 section 6.3.3): backslash before '"', '\\' and ']'."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(value: str, limit: int) -> str:
    """Header fields are PRINTUSASCII (33..126) without spaces."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)
    return cleaned[:limit] or NILVALUE


def timestamp(ts_us: int) -> str:
    moment = datetime.fromtimestamp(ts_us / 1_000_000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_us % 1_000_000:06d}Z"


class Rfc5424Formatter:
    def __init__(self, settings: SyslogSinkSettings) -> None:
        self.facility = FACILITIES[settings.facility]
        self.hostname = _printable(settings.hostname or socket.gethostname(), 255)
        self.app_name = _printable(settings.app_name, 48)
        self.procid = str(os.getpid())
        self.sd_id = settings.sd_id
        self.max_bytes = settings.max_message_bytes
        self.bom = settings.bom

    def structured_data(self, event: Event) -> str:
        params = []
        for name, attribute in _SD_PARAMS:
            value = getattr(event, attribute)
            if value is None or value == "":
                continue
            params.append(f'{name}="{sd_escape(str(value))}"')
        return f"[{self.sd_id} {' '.join(params)}]"

    def format(self, event: Event) -> bytes:
        pri = self.facility * 8 + SEVERITIES.get(event.decision, 5)
        header = (
            f"<{pri}>1 {timestamp(event.ts)} {self.hostname} {self.app_name} {self.procid} "
            f"{_printable(event.kind, 32)} {self.structured_data(event)} "
        ).encode()
        record: dict[str, Any] = event_record(event)
        body = orjson.dumps(record)
        prefix = header + (BOM if self.bom else b"")
        if len(prefix) + len(body) > self.max_bytes:
            record["details"] = None
            record["details_truncated"] = True
            body = orjson.dumps(record)
        return prefix + body


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`."""
    return str(len(message)).encode() + b" " + message


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: Exception | None = None

    def error_received(self, exc: Exception) -> None:
        self.error = exc


class SyslogSink(Sink):
    def __init__(self, name: str, settings: SyslogSinkSettings) -> None:
        super().__init__(name, settings.kinds)
        self.settings = settings
        self.formatter = Rfc5424Formatter(settings)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _UdpProtocol | None = None
        self._ssl: ssl.SSLContext | None = None

    @property
    def port(self) -> int:
        return self.settings.port or (6514 if self.settings.protocol == "tls" else 514)

    @property
    def destination(self) -> str:
        return f"syslog+{self.settings.protocol}://{self.settings.host}:{self.port}"

    async def send(self, events: Sequence[Event]) -> None:
        messages = [self.formatter.format(e) for e in events]
        try:
            if self.settings.protocol == "udp":
                await self._send_udp(messages)
            else:
                await self._send_stream(messages)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            await self.close()
            raise SinkError(f"{self.destination}: {exc or type(exc).__name__}") from exc

    # -- UDP -------------------------------------------------------------------------------------

    async def _send_udp(self, messages: list[bytes]) -> None:
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(
                _UdpProtocol, remote_addr=(self.settings.host, self.port)
            )
            self._udp, self._udp_protocol = transport, protocol
        assert self._udp_protocol is not None
        for message in messages:
            if self._udp_protocol.error is not None:
                error, self._udp_protocol.error = self._udp_protocol.error, None
                raise error
            self._udp.sendto(message)

    # -- TCP and TLS -----------------------------------------------------------------------------

    async def _send_stream(self, messages: list[bytes]) -> None:
        writer = await self._connection()
        writer.write(b"".join(octet_frame(m) for m in messages))
        await asyncio.wait_for(writer.drain(), self.settings.connect_timeout_s)

    async def _connection(self) -> asyncio.StreamWriter:
        # The receiver never writes to us: data or EOF on the reader means it closed or reset the connection.
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None and not writer.is_closing() and not reader.at_eof():
            return writer
        await self.close()
        context = self._tls_context() if self.settings.protocol == "tls" else None
        new_reader, new_writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.settings.host,
                self.port,
                ssl=context,
                server_hostname=(self.settings.tls_server_name or self.settings.host) if context else None,
            ),
            self.settings.connect_timeout_s,
        )
        sock = new_writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._reader, self._writer = new_reader, new_writer
        return new_writer

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is not None:
            return self._ssl
        s = self.settings
        context = ssl.create_default_context(cafile=str(s.tls_ca_file) if s.tls_ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not s.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if s.tls_cert_file is not None and s.tls_key is not None:
            password = s.tls_key_password.get_secret_value() if s.tls_key_password else None
            load_client_certificate(context, str(s.tls_cert_file), s.tls_key.get_secret_value(), password)
        self._ssl = context
        return context

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):  # closing a broken connection is best effort
                await asyncio.wait_for(writer.wait_closed(), 2)
        if self._udp is not None:
            self._udp.close()
            self._udp = None


def load_client_certificate(
    context: ssl.SSLContext, cert_file: str, key_pem: str, password: str | None
) -> None:
    """`ssl` loads keys from files only: the key (held in memory as a secret) goes through a private
    temporary file that exists only while it is read."""
    fd, path = tempfile.mkstemp(prefix="gatehouse-key-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key_pem if key_pem.endswith("\n") else key_pem + "\n")
        context.load_cert_chain(cert_file, path, password=password)
    finally:
        os.unlink(path)
