"""Checkpoints: "event `seq` had hash `hash`", stated at `ts` and, with a signing key, signed with Ed25519.

A signed checkpoint is what a database administrator cannot forge: whoever rewrites the chain (edits an
event and recomputes every later hash, or truncates the tail and moves `chain_head` back) also has to
produce a checkpoint signature for the new hashes, which needs the private key that only the Gatehouse
server holds. `verify` checks every checkpoint against the chain and every signature against the public
key; an exported trail carries its checkpoints, so a third party with the public key alone can verify it.

The signed message is the canonical JSON array `["gatehouse.checkpoint.v1", seq, hash, ts]` (orjson
bytes). Keys: a PEM PKCS#8 Ed25519 private key, or its raw 32-byte seed in base64. Public keys: PEM
SubjectPublicKeyInfo, or the raw 32 bytes in base64 (what `gatehouse audit keygen` prints).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import SecretStr

from gatehouse.audit.events import new_id, now_us
from gatehouse.store.db import Database, Row, StoreError, Tx

DOMAIN = "gatehouse.checkpoint.v1"
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")
KINDS = ("manual", "anchor", "auto")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: str
    seq: int
    hash: str
    ts: int
    kind: str  # manual (CLI), auto (server), anchor (where the retained chain starts after compaction)
    key_id: str | None = None
    signature: str | None = None  # base64 Ed25519 signature of message()
    created_by: str | None = None
    event_seq: int | None = None  # anchors: the audit.compact event written with it

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash, self.ts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Row) -> Checkpoint:
        return cls(
            id=str(row["id"]),
            seq=int(row["seq"]),
            hash=str(row["hash"]),
            ts=int(row["ts"]),
            kind=str(row["kind"]),
            key_id=row.get("key_id"),
            signature=row.get("signature"),
            created_by=row.get("created_by"),
            event_seq=row.get("event_seq"),
        )


def checkpoint_message(seq: int, hash_: str, ts: int) -> bytes:
    return orjson.dumps([DOMAIN, seq, hash_, ts])


# -- keys -----------------------------------------------------------------------------------------------


def load_private_key(text: str) -> Ed25519PrivateKey:
    """A PEM (PKCS#8, unencrypted) Ed25519 private key, or its 32-byte seed in base64."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"signing key: unreadable PEM ({type(exc).__name__})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing key: the PEM key is not an Ed25519 key")
        return key
    seed = _b64(text)
    if seed is None or len(seed) != 32:
        raise ValueError("signing key: expected a PEM Ed25519 private key or a base64 32-byte seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_public_key(text: str, *, allow_path: bool = True) -> Ed25519PublicKey:
    """A PEM public key, the raw 32 bytes in base64, or (allow_path) the path of a file holding either."""
    text = text.strip()
    if allow_path and not text.startswith("-----BEGIN"):
        raw = _b64(text)
        if raw is None or len(raw) != 32:
            path = Path(text).expanduser()
            if path.is_file():
                text = path.read_text().strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"public key: unreadable PEM ({type(exc).__name__})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("public key: the PEM key is not an Ed25519 key")
        return key
    raw = _b64(text)
    if raw is None or len(raw) != 32:
        raise ValueError(
            "public key: expected a PEM Ed25519 public key, its raw 32 bytes in base64, or a file"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def signing_key_from_secret(secret: SecretStr | None) -> Ed25519PrivateKey | None:
    return None if secret is None else load_private_key(secret.get_secret_value())


def public_key_text(key: Ed25519PublicKey) -> str:
    """The raw 32 bytes in base64: short enough to paste into a command line or a ticket."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_private_key_pem() -> tuple[bytes, str]:
    """A new key as PEM (PKCS#8) and its public key as base64."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, public_key_text(key.public_key())


def signature_valid(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    if checkpoint.signature is None:
        return False
    signature = _b64(checkpoint.signature)
    if signature is None:
        return False
    try:
        key.verify(signature, checkpoint.message())
    except InvalidSignature:
        return False
    return True


def _b64(text: str) -> bytes | None:
    """Standard or URL-safe base64 (whitespace ignored); None if it is neither."""
    compact = "".join(text.split())
    if not _BASE64.match(compact):
        return None
    try:
        return base64.urlsafe_b64decode(compact.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        return None


# -- the checkpoints table --------------------------------------------------------------------------------


def insert_checkpoint(
    tx: Tx,
    seq: int,
    hash_: str,
    *,
    kind: str,
    signing_key: Ed25519PrivateKey | None,
    created_by: str | None,
    ts: int | None = None,
    checkpoint_id: str | None = None,
    event_seq: int | None = None,
) -> Checkpoint:
    ts = now_us() if ts is None else ts
    kid = signature = None
    if signing_key is not None:
        kid = key_id(signing_key.public_key())
        signature = base64.b64encode(signing_key.sign(checkpoint_message(seq, hash_, ts))).decode()
    checkpoint = Checkpoint(
        checkpoint_id or new_id(), seq, hash_, ts, kind, kid, signature, created_by, event_seq
    )
    tx.execute(
        "INSERT INTO checkpoints (id, seq, hash, ts, kind, key_id, signature, created_by, event_seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (checkpoint.id, seq, hash_, ts, kind, kid, signature, created_by, event_seq),
    )
    return checkpoint


def create_checkpoint(
    db: Database,
    signing_key: Ed25519PrivateKey | None,
    *,
    kind: str = "manual",
    created_by: str | None = "cli",
) -> Checkpoint:
    """A checkpoint of the chain's current head. Raises StoreError when the log is empty."""
    with db.transaction() as tx:
        head = tx.one("SELECT seq, hash FROM chain_head WHERE id = 1")
        if head is None or int(head["seq"]) == 0:
            raise StoreError("the event log is empty: nothing to checkpoint")
        return insert_checkpoint(
            tx,
            int(head["seq"]),
            str(head["hash"]),
            kind=kind,
            signing_key=signing_key,
            created_by=created_by,
        )


def list_checkpoints(db: Database, *, max_seq: int | None = None) -> list[Checkpoint]:
    query = "SELECT id, seq, hash, ts, kind, key_id, signature, created_by, event_seq FROM checkpoints"
    params: tuple[Any, ...] = ()
    if max_seq is not None:
        query += " WHERE seq <= ?"
        params = (max_seq,)
    return [Checkpoint.from_row(r) for r in db.query(query + " ORDER BY seq, ts", params)]
