"""Verification finds every kind of tampering, says where, and works from an exported file alone."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatehouse.audit.chain import event_hash, row_hash
from gatehouse.audit.checkpoints import (
    create_checkpoint,
    generate_private_key_pem,
    load_private_key,
    load_public_key,
    public_key_text,
)
from gatehouse.audit.events import Event
from gatehouse.audit.verify import TrailError, export_trail, verify_database, verify_file
from gatehouse.audit.writer import append_events
from gatehouse.store.db import Database

N = 50


def fill(db: Database, n: int = N) -> list[Event]:
    events = [
        Event(
            kind="llm.request" if i % 2 == 0 else "llm.response",
            session=f"s{i % 3}",
            actor_user="u1",
            decision="allow",
            details={"n": i, "last_prompt": f"prompt {i}"},
        )
        for i in range(n)
    ]
    with db.transaction() as tx:
        append_events(tx, events)
    return events


def row(db: Database, seq: int) -> dict[str, object]:
    found = db.query_one("SELECT * FROM events WHERE seq = ?", (seq,))
    assert found is not None
    return found


def execute(db: Database, *statements: tuple[str, tuple[object, ...]]) -> None:
    with db.transaction() as tx:
        for sql, params in statements:
            tx.execute(sql, params)


def renumber(db: Database, where: str, delta: int) -> None:
    """Shift seq by delta for rows matching `where`, without transient primary-key clashes."""
    execute(
        db,
        (f"UPDATE events SET seq = -(seq + ?) WHERE {where}", (delta,)),
        ("UPDATE events SET seq = -seq WHERE seq < 0", ()),
    )


def test_intact_chain_verifies_across_batches(db: Database) -> None:
    fill(db)
    report = verify_database(db, batch_size=7)
    assert report.ok, report.breaks
    assert (report.events, report.first_seq, report.last_seq, report.head_seq) == (N, 1, N, N)
    assert report.complete and report.first is None
    assert report.as_dict()["ok"] is True


def test_empty_log_verifies(db: Database) -> None:
    report = verify_database(db)
    assert report.ok and report.events == 0


def test_edited_details_is_located(db: Database) -> None:
    events = fill(db)
    execute(db, ("UPDATE events SET details = ? WHERE seq = 20", ('{"n":999}',)))
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("edited", 20, events[19].id)


def test_edited_decision_is_located(db: Database) -> None:
    events = fill(db)
    execute(db, ("UPDATE events SET decision = 'deny' WHERE seq = 33", ()))
    report = verify_database(db)
    assert not report.ok
    assert report.first is not None
    assert (report.first.kind, report.first.seq, report.first.event_id) == ("edited", 33, events[32].id)


def test_edit_with_recomputed_hash_is_located_by_the_next_link(db: Database) -> None:
    events = fill(db)
    r = row(db, 20)
    r["details"] = '{"n":"forged"}'
    execute(db, ("UPDATE events SET details = ?, hash = ? WHERE seq = 20", (r["details"], row_hash(r))))
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("edited", 20, events[19].id)
    assert "hash recomputed" in first.detail


def test_deleted_row_is_located(db: Database) -> None:
    fill(db)
    execute(db, ("DELETE FROM events WHERE seq = 20", ()))
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("deleted", 20, None)
    assert "20..20" in first.detail


def test_deleted_row_with_renumbering_is_located(db: Database) -> None:
    events = fill(db)
    execute(
        db,
        ("DELETE FROM events WHERE seq = 20", ()),
        ("UPDATE chain_head SET seq = seq - 1", ()),
    )
    renumber(db, "seq > 20", -1)
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("deleted", 20, events[20].id)
    assert "renumbered" in first.detail


def test_inserted_forged_row_is_located(db: Database) -> None:
    fill(db)
    renumber(db, "seq >= 20", 1)
    forged = Event(kind="admin.user.create", details={"name": "mallory", "role": "owner"})
    prev = str(row(db, 19)["hash"])
    values = (20, forged.id, forged.ts, forged.kind, None, None, None, None, None, None, None, "allow", None,
              forged.details_json(), prev)  # fmt: skip
    execute(
        db,
        (
            "INSERT INTO events (seq, id, ts, kind, actor_user, actor_agent, actor_token, on_behalf_of,"
            " workspace, session, parent, decision, resource, details, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, event_hash(values)),
        ),
        ("UPDATE chain_head SET seq = seq + 1", ()),
    )
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("inserted", 20, forged.id)


def test_row_appended_behind_the_writers_back_is_located(db: Database) -> None:
    fill(db)
    forged = Event(kind="admin.token.create", details={"user": "mallory"})
    values = (N + 1, forged.id, forged.ts, forged.kind, None, None, None, None, None, None, None, "allow",
              None, forged.details_json(), str(row(db, N)["hash"]))  # fmt: skip
    execute(
        db,
        (
            "INSERT INTO events (seq, id, ts, kind, actor_user, actor_agent, actor_token, on_behalf_of,"
            " workspace, session, parent, decision, resource, details, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, event_hash(values)),
        ),
    )
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("inserted", N + 1, forged.id)


def test_swapped_rows_are_located(db: Database) -> None:
    events = fill(db)
    execute(
        db,
        ("UPDATE events SET seq = -1 WHERE seq = 20", ()),
        ("UPDATE events SET seq = 20 WHERE seq = 21", ()),
        ("UPDATE events SET seq = 21 WHERE seq = -1", ()),
    )
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("reordered", 20, events[20].id)
    assert "now at seq 21" in first.detail


def test_swapped_content_keeping_seq_is_located(db: Database) -> None:
    fill(db)
    a, b = row(db, 10), row(db, 11)
    columns = [c for c in a if c not in ("seq", "id")]
    sets = ", ".join(f"{c} = ?" for c in columns)
    execute(
        db,
        ("UPDATE events SET id = ? WHERE seq = 10", ("tmp",)),
        (f"UPDATE events SET id = ?, {sets} WHERE seq = 11", (a["id"], *(a[c] for c in columns))),
        (f"UPDATE events SET id = ?, {sets} WHERE seq = 10", (b["id"], *(b[c] for c in columns))),
    )
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("reordered", 10, b["id"])


def test_truncated_tail_is_detected_from_the_chain_head(db: Database) -> None:
    fill(db)
    execute(db, ("DELETE FROM events WHERE seq > 45", ()))
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq) == ("truncated", 46)
    assert "46..50" in first.detail


def test_truncated_tail_with_moved_head_needs_a_checkpoint(db: Database) -> None:
    fill(db)
    create_checkpoint(db, None)
    forty_five = row(db, 45)
    execute(
        db,
        ("DELETE FROM events WHERE seq > 45", ()),
        ("UPDATE chain_head SET seq = 45, hash = ?", (forty_five["hash"],)),
    )
    report = verify_database(db)
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("truncated", 46)
    # Without the checkpoint, a tail cut together with chain_head is invisible: that is what signed
    # checkpoints are for.
    execute(db, ("DELETE FROM checkpoints", ()))
    assert verify_database(db).ok


def test_deleted_prefix_without_anchor_is_detected(db: Database) -> None:
    fill(db)
    execute(db, ("DELETE FROM events WHERE seq < 5", ()))
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq) == ("deleted", 1)


def test_forged_tombstone_is_detected(db: Database) -> None:
    events = fill(db)
    # Blank an event's content as if retention had pruned it, pointing at an ordinary event.
    execute(db, ("UPDATE events SET details = '{}', session = NULL, pruned_by = 40 WHERE seq = 12", ()))
    first = verify_database(db).first
    assert first is not None
    assert (first.kind, first.seq, first.event_id) == ("pruned", 12, events[11].id)


def test_full_rewrite_is_caught_by_a_checkpoint(db: Database) -> None:
    fill(db)
    create_checkpoint(db, None)
    # Rewrite: edit seq 20 and recompute every hash from there, moving chain_head along.
    prev = str(row(db, 19)["hash"])
    with db.transaction() as tx:
        for seq in range(20, N + 1):
            r = tx.one("SELECT * FROM events WHERE seq = ?", (seq,))
            assert r is not None
            if seq == 20:
                r["details"] = '{"n":"rewritten"}'
            r["prev_hash"] = prev
            prev = row_hash(r)
            tx.execute(
                "UPDATE events SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (r["details"], r["prev_hash"], prev, seq),
            )
        tx.execute("UPDATE chain_head SET hash = ?", (prev,))
    first = verify_database(db).first
    assert first is not None
    assert first.kind == "rewritten"
    assert first.seq <= 20
    assert f"seq {first.seq}..{N}" in first.detail


def test_signed_checkpoints_verify_and_forgeries_do_not(db: Database) -> None:
    fill(db)
    key = Ed25519PrivateKey.generate()
    checkpoint = create_checkpoint(db, key)
    assert checkpoint.signature and checkpoint.key_id
    report = verify_database(db, public_key=key.public_key())
    assert report.ok
    assert (report.checkpoints_verified, report.signed_through) == (1, N)
    # Another key cannot vouch for it.
    other = verify_database(db, public_key=Ed25519PrivateKey.generate().public_key())
    assert other.ok and other.checkpoints_verified == 0 and other.checkpoints_unverified == 1
    # A checkpoint moved to match a rewritten chain keeps a signature that no longer verifies.
    execute(db, ("UPDATE checkpoints SET hash = ?", ("f" * 64,)))
    first = verify_database(db, public_key=key.public_key()).first
    assert first is not None
    assert (first.kind, first.seq) == ("checkpoint", N)


def test_keep_going_reports_later_breaks_too(db: Database) -> None:
    fill(db)
    execute(
        db,
        ("UPDATE events SET details = '{}' WHERE seq = 10", ()),
        ("DELETE FROM events WHERE seq = 30", ()),
    )
    report = verify_database(db, max_breaks=10)
    assert [(b.kind, b.seq) for b in report.breaks] == [("edited", 10), ("deleted", 30)]
    assert report.complete


# -- keys and the exported trail -----------------------------------------------------------------------


def test_keys_load_from_pem_and_base64_seed(tmp_path: Path) -> None:
    pem, public = generate_private_key_pem()
    key = load_private_key(pem.decode())
    assert public_key_text(key.public_key()) == public
    seed = key.private_bytes_raw()
    assert public_key_text(load_private_key(base64.b64encode(seed).decode()).public_key()) == public
    path = tmp_path / "public.txt"
    path.write_text(public + "\n")
    assert public_key_text(load_public_key(str(path))) == public
    with pytest.raises(ValueError, match="signing key"):
        load_private_key("not a key")


def test_exported_trail_verifies_without_the_database(db: Database, tmp_path: Path) -> None:
    fill(db)
    key = Ed25519PrivateKey.generate()
    create_checkpoint(db, key)
    trail = tmp_path / "trail.jsonl"
    with trail.open("wb") as out:
        summary = export_trail(db, out, path=str(trail), batch_size=16)
    assert (summary.events, summary.checkpoints, summary.last_seq) == (N, 1, N)
    lines = trail.read_bytes().splitlines()
    assert len(lines) == 1 + 1 + N
    first_event = orjson.loads(lines[2])
    assert first_event["seq"] == 1 and isinstance(first_event["details"], str)

    report = verify_file(trail, public_key=key.public_key(), batch_size=16)
    assert report.ok, report.breaks
    assert (report.events, report.checkpoints_verified, report.signed_through) == (N, 1, N)

    # Edit one event in the file.
    edited = orjson.loads(lines[2 + 24])
    edited["decision"] = "deny"
    tampered = tmp_path / "edited.jsonl"
    tampered.write_bytes(b"\n".join([*lines[: 2 + 24], orjson.dumps(edited), *lines[2 + 25 :]]) + b"\n")
    first = verify_file(tampered, public_key=key.public_key()).first
    assert first is not None
    assert (first.kind, first.seq) == ("edited", 25)

    # Drop the last events and fix up the header: the signed checkpoint still gives it away.
    header = orjson.loads(lines[0])
    header["head"] = {"seq": 40, "hash": orjson.loads(lines[2 + 39])["hash"]}
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"\n".join([orjson.dumps(header), lines[1], *lines[2 : 2 + 40]]) + b"\n")
    first = verify_file(cut, public_key=key.public_key()).first
    assert first is not None
    assert (first.kind, first.seq) == ("truncated", 41)


def test_unreadable_trail_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"gatehouse_trail": 1, "head": {"seq": 1, "hash": "00"}}\nnot json\n')
    with pytest.raises(TrailError, match="line 2"):
        verify_file(bad)
