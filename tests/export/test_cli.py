"""`gatehouse audit export`: a time window of the trail to stdout or a file, progress on stderr."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from gatehouse.audit.events import Event
from gatehouse.cli.audit_export import export
from gatehouse.cli.context import Context
from gatehouse.store.db import Database
from gatehouse.store.migrations import migrate
from gatehouse.timeutil import iso
from tests.export.conftest import write

HOUR = 3600 * 1_000_000
T0 = 1_790_000_000_000_000  # 2026-09-21T...


def setup_store(tmp_path: Path) -> tuple[Path, list[Event]]:
    config = tmp_path / "gatehouse.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "g.db"}"\n')
    db = Database(f"sqlite:///{tmp_path / 'g.db'}")
    migrate(db)
    events = [Event(kind="test.tick", ts=T0 + i * HOUR, details={"n": i}) for i in range(6)]
    write(db, events)
    db.close()
    return config, events


def test_window_to_stdout(tmp_path: Path) -> None:
    config, events = setup_store(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        export, ["--since", iso(T0 + HOUR) or "", "--until", iso(T0 + 4 * HOUR) or ""], obj=Context(config)
    )
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == [e.id for e in events[1:4]]  # since inclusive, until exclusive
    assert [line["seq"] for line in lines] == [2, 3, 4]
    assert "exported 3 events (seq 2..4) to stdout" in result.stderr


def test_ocsf_to_a_file(tmp_path: Path) -> None:
    config, events = setup_store(tmp_path)
    out = tmp_path / "out" / "ocsf.jsonl"
    out.parent.mkdir()
    result = CliRunner().invoke(
        export,
        ["--since", iso(T0) or "", "--format", "ocsf", "--out", str(out), "--batch", "2"],
        obj=Context(config),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["metadata"]["uid"] for r in records] == [e.id for e in events]
    assert {r["class_uid"] for r in records} == {6003}
    assert f"to {out}" in result.stderr


def test_empty_window_and_bad_times(tmp_path: Path) -> None:
    config, _ = setup_store(tmp_path)
    result = CliRunner().invoke(export, ["--since", iso(T0 + 100 * HOUR) or ""], obj=Context(config))
    assert result.exit_code == 0 and result.stdout == ""
    assert "exported 0 events to stdout" in result.stderr
    bad = CliRunner().invoke(export, ["--since", "yesterday-ish"], obj=Context(config))
    assert bad.exit_code == 2 and "cannot read time" in bad.output
    backwards = CliRunner().invoke(export, ["--since", "1h", "--until", "2h"], obj=Context(config))
    assert backwards.exit_code == 2 and "--until must be later" in backwards.output
