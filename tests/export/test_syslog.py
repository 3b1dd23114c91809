"""Syslog over UDP, TCP and TLS (mutual), against listeners started here; frames parsed as RFC 5424."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gatehouse.audit.events import Event
from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.export.settings import ExportSettings, SyslogSinkSettings
from gatehouse.store.db import Database
from tests.export.conftest import denied_request, interception, running, wait_until, write

BOM = b"\xef\xbb\xbf"
RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>-|(?:\[(?:[^\]\\\"]|\"(?:[^\"\\]|\\.)*\")*\])+)(?: (?P<msg>.*))?$",
    re.DOTALL,
)
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
SD_ELEMENT = re.compile(r'^\[(?P<id>[^ \]]+)(?P<params>(?: [^=\s\]"]+="(?:[^"\\]|\\.)*")*)\]$')
SD_PARAM = re.compile(r' ([^=\s\]"]+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Message:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd_id: str
    params: dict[str, str]
    body: dict[str, object]


def parse(frame: bytes) -> Message:
    match = RFC5424.match(frame)
    assert match, frame[:200]
    sd = match["sd"].decode()
    element = SD_ELEMENT.match(sd)
    assert element, sd
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in SD_PARAM.findall(element["params"])}
    msg = match["msg"]
    assert msg.startswith(BOM)
    return Message(
        pri=int(match["pri"]),
        timestamp=match["ts"].decode(),
        hostname=match["host"].decode(),
        app_name=match["app"].decode(),
        procid=match["procid"].decode(),
        msgid=match["msgid"].decode(),
        sd_id=element["id"],
        params=params,
        body=orjson.loads(msg[len(BOM) :]),
    )


def split_octet_counted(stream: bytes) -> list[bytes]:
    """RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG, repeated."""
    frames = []
    while stream:
        length, _, rest = stream.partition(b" ")
        assert length.isdigit(), stream[:40]
        n = int(length)
        assert len(rest) >= n, "truncated frame"
        frames.append(rest[:n])
        stream = rest[n:]
    return frames


@dataclass
class Listener:
    port: int
    received: bytearray = field(default_factory=bytearray)
    datagrams: list[bytes] = field(default_factory=list)
    peer_certs: list[object] = field(default_factory=list)

    def frames(self) -> list[bytes]:
        return self.datagrams if self.datagrams else split_octet_counted(bytes(self.received))


@pytest.fixture
async def tcp_listener() -> AsyncIterator[Listener]:
    listener = Listener(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            listener.received += chunk
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    async with server:
        yield listener


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.listener.datagrams.append(data)


@pytest.fixture
async def udp_listener() -> AsyncIterator[Listener]:
    listener = Listener(port=0)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Datagrams(listener), local_addr=("127.0.0.1", 0)
    )
    listener.port = transport.get_extra_info("sockname")[1]
    yield listener
    transport.close()


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def sample_events() -> list[Event]:
    request, response = interception()
    tricky = Event(
        kind="admin.user.create",
        resource='user:da"na]\\x',  # every character PARAM-VALUE must escape
        actor_user="u-root",
        details={"name": 'da"na]\\x', "by": "root"},
    )
    return [request, response, denied_request(), tricky]


def check_messages(frames: list[bytes], events: list[Event], db: Database) -> None:
    rows = {r["seq"]: r for r in db.query("SELECT seq, id, hash FROM events")}
    messages = [parse(f) for f in frames]
    assert [m.params["seq"] for m in messages] == [str(s) for s in sorted(rows)]
    facility = 16  # local0
    severities = {"allow": 6, "deny": 4, "error": 3}
    for message, event in zip(messages, events, strict=True):
        seq = int(message.params["seq"])
        assert message.pri == facility * 8 + severities[event.decision]
        assert TIMESTAMP.match(message.timestamp)
        assert message.hostname == "gh-test"
        assert message.app_name == "gatehouse"
        assert message.procid.isdigit()
        assert message.msgid == event.kind
        assert message.sd_id == "gatehouse@32473"
        assert message.params["id"] == event.id == rows[seq]["id"]
        assert message.params["hash"] == rows[seq]["hash"]
        assert message.params["kind"] == event.kind
        assert message.params["decision"] == event.decision
        if event.resource:
            assert message.params["resource"] == event.resource  # escaping round-trips
        assert message.body["id"] == event.id
        assert message.body["details"] == event.details
        assert message.body["seq"] == seq
    assert messages[0].params["user"] == "u-alice" and messages[0].params["agent"] == "a-bot"
    assert "workspace" not in messages[0].params  # absent values are left out, not sent empty


def syslog_settings(port: int, protocol: str, **extra: object) -> ExportSettings:
    sink = SyslogSinkSettings.model_validate(
        {
            "type": "syslog",
            "host": "127.0.0.1",
            "port": port,
            "protocol": protocol,
            "hostname": "gh-test",
            **extra,
        }
    )
    return ExportSettings(sinks={"siem": sink}, retry_initial_s=0.05, retry_max_s=0.2)


async def test_udp(store: Database, udp_listener: Listener) -> None:
    events = write(store, sample_events())
    exporter = Exporter(store, syslog_settings(udp_listener.port, "udp"))
    async with running(exporter):
        await wait_until(lambda: len(udp_listener.datagrams) == 4, what="4 datagrams")
    check_messages(udp_listener.frames(), events, store)


async def test_tcp_with_octet_counting(store: Database, tcp_listener: Listener) -> None:
    events = write(store, sample_events())
    exporter = Exporter(store, syslog_settings(tcp_listener.port, "tcp"))
    async with running(exporter):
        await wait_until(lambda: exporter.status["siem"].cursor == 4, what="delivery")
        await wait_until(lambda: bytes(tcp_listener.received).count(b"<") >= 4, what="bytes on the wire")
    check_messages(tcp_listener.frames(), events, store)


async def test_tls_with_client_certificate(store: Database, tmp_path: Path) -> None:
    server_cert, server_key = self_signed(tmp_path, "syslog.test")
    client_cert, client_key = self_signed(tmp_path, "gatehouse-client")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_cert))
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the exporter must present its certificate
    listener = Listener(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.peer_certs.append(writer.get_extra_info("peercert"))
        while chunk := await reader.read(65536):
            listener.received += chunk
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    listener.port = server.sockets[0].getsockname()[1]
    events = write(store, sample_events())
    settings = syslog_settings(
        listener.port,
        "tls",
        tls_ca_file=str(server_cert),
        tls_cert_file=str(client_cert),
        tls_key=f"file:{client_key}",
    )
    async with server:
        exporter = Exporter(store, settings)
        async with running(exporter):
            await wait_until(
                lambda: bytes(listener.received).count(b"<") >= 4, within=10, what="TLS delivery"
            )
    check_messages(listener.frames(), events, store)
    [peer] = listener.peer_certs
    assert isinstance(peer, dict)
    assert peer["subject"] == ((("commonName", "gatehouse-client"),),)


async def test_tls_refuses_an_unknown_server_certificate(store: Database, tmp_path: Path) -> None:
    server_cert, server_key = self_signed(tmp_path, "impostor")
    other_ca, _ = self_signed(tmp_path, "expected")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert, server_key)
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    write(store, sample_events())
    exporter = Exporter(store, syslog_settings(port, "tls", tls_ca_file=str(other_ca)))
    async with server, running(exporter):
        await wait_until(lambda: exporter.status["siem"].failures >= 2, what="failed attempts")
    status = exporter.status["siem"]
    assert status.up is False and status.cursor == 0  # nothing counted as delivered
    assert "CERTIFICATE_VERIFY_FAILED" in (status.last_error or "")
    assert received == b""


async def test_a_message_over_the_size_limit_drops_its_details(
    store: Database, udp_listener: Listener
) -> None:
    big = Event(kind="test.big", details={"blob": "x" * 5000})
    write(store, [big])
    exporter = Exporter(store, syslog_settings(udp_listener.port, "udp", max_message_bytes=2048))
    async with running(exporter):
        await wait_until(lambda: len(udp_listener.datagrams) == 1, what="1 datagram")
    [frame] = udp_listener.frames()
    assert len(frame) <= 2048
    message = parse(frame)
    assert message.body["details"] is None and message.body["details_truncated"] is True
    assert message.params["id"] == big.id
