"""Templates: policy as code. One YAML file per agent profile, validated against a published JSON Schema
(`template.schema.json`), versioned in the store.

Loading keeps the line of every key and list item, so an invalid template is rejected with the line and
the reason (`templates/ci-bot.yaml:12: models.deny[0]: 7 is not of type 'string'`), and a decision can
name the rule that made it (`templates/ci-bot.yaml:12 deny models "claude-opus-*"`).

Each `apply` of a changed file stores a new version (who, when, content, hash) and appends an
`admin.template.apply` event carrying the unified diff, in one transaction; applying an unchanged file
changes nothing. Every change bumps the policy version, which the Bridge reads with each token lookup, so
every replica recompiles its decision tables at its next request.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import orjson
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gatehouse.audit.events import Event, now_us
from gatehouse.audit.writer import append_events
from gatehouse.identity.service import Actor
from gatehouse.store.db import Database, Row, Tx
from gatehouse.timeutil import parse_duration

Path = tuple[str | int, ...]
MAX_TEMPLATE_BYTES = 256 * 1024


class PolicyError(Exception):
    """A policy change that cannot be made; the message says why."""


class TemplateNotFound(PolicyError):
    pass


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    line: int | None
    where: str  # the setting, e.g. `budgets[0].period`
    message: str


class TemplateInvalid(PolicyError):
    """The template is not valid; `problems` says where (line) and why."""

    def __init__(self, source: str, problems: list[TemplateProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for p in self.problems:
            at = f"{self.source}:{p.line}" if p.line is not None else self.source
            out.append(f"{at}: {p.where + ': ' if p.where else ''}{p.message}")
        return out


@dataclass(frozen=True, slots=True)
class LoadedTemplate:
    """A valid template: its text, the document it says, and the line of each setting."""

    name: str
    source: str
    content: str
    document: dict[str, Any]
    lines: dict[str, int]  # JSON pointer of a setting (`/models/deny/0`) -> line (1-based)
    hash: str

    def line(self, *path: str | int) -> int | None:
        return self.lines.get(pointer(path))

    @property
    def max_ttl_s(self) -> int | None:
        ttl = (self.document.get("tokens") or {}).get("max_ttl")
        return parse_duration(ttl) if ttl else None


def pointer(path: Path) -> str:
    """RFC 6901 JSON pointer of a path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _where(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@cache
def schema() -> dict[str, Any]:
    """The published JSON Schema of templates."""
    text = resources.files("gatehouse.policy").joinpath("template.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


# -- loading -------------------------------------------------------------------------------------------


def load_template(content: str, source: str = "<template>") -> LoadedTemplate:
    """Parse and validate a template; raise TemplateInvalid listing every problem with its line."""
    if len(content.encode()) > MAX_TEMPLATE_BYTES:
        raise TemplateInvalid(source, [TemplateProblem(None, "", f"larger than {MAX_TEMPLATE_BYTES} bytes")])
    try:
        node = yaml.compose(content, Loader=yaml.CSafeLoader)
        document = yaml.load(content, Loader=yaml.CSafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise TemplateInvalid(source, [TemplateProblem(line, "", f"invalid YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise TemplateInvalid(source, [TemplateProblem(None, "", f"invalid YAML: {exc}")]) from None
    if node is None or document is None:
        raise TemplateInvalid(source, [TemplateProblem(1, "", "the template is empty")])
    lines: dict[str, int] = {}
    problems: list[TemplateProblem] = []
    _walk(node, (), lines, problems)
    if problems:
        raise TemplateInvalid(source, problems)
    if not isinstance(document, dict):
        raise TemplateInvalid(source, [TemplateProblem(node.start_mark.line + 1, "", "must be a mapping")])
    document = _jsonable(document)
    problems = _schema_problems(document, lines) or _semantic_problems(document, lines)
    if problems:
        raise TemplateInvalid(source, problems)
    return LoadedTemplate(
        name=document["name"],
        source=source,
        content=content,
        document=document,
        lines=lines,
        hash=hashlib.sha256(content.encode()).hexdigest(),
    )


def _walk(node: yaml.Node, path: Path, lines: dict[str, int], problems: list[TemplateProblem]) -> None:
    lines.setdefault(pointer(path), node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                problems.append(
                    TemplateProblem(key_node.start_mark.line + 1, _where((*path, key)), "duplicate key")
                )
            seen.add(key)
            lines[pointer((*path, key))] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[pointer((*path, i))] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, problems)


def _jsonable(value: Any) -> Any:
    """YAML may hold dates and non-string keys; the stored document is plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _line_of(lines: dict[str, int], path: Path) -> int | None:
    while True:
        found = lines.get(pointer(path))
        if found is not None or not path:
            return found
        path = path[:-1]


def _schema_problems(document: dict[str, Any], lines: dict[str, int]) -> list[TemplateProblem]:
    problems = []
    for error in _validator().iter_errors(document):
        for path, message in _explain(error):
            problems.append(TemplateProblem(_line_of(lines, path), _where(path), message))
    problems.sort(key=lambda p: (p.line or 0, p.where))
    return problems


def _explain(error: ValidationError) -> list[tuple[Path, str]]:
    """Point at the offending key rather than its parent where the schema names one."""
    path: Path = tuple(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = set(_schema_dict(error).get("properties", {}))
        extra = [k for k in instance if k not in known]
        return [((*path, k), f"unknown setting {k!r}") for k in extra] or [(path, error.message)]
    if error.validator == "required" and isinstance(instance, dict):
        return [(path, error.message)]
    if error.validator == "anyOf" and path and "rate_limits" in path:
        return [(path, "a rate limit needs requests_per_minute or tokens_per_minute")]
    return [(path, error.message)]


def _schema_dict(error: ValidationError) -> dict[str, Any]:
    return error.schema if isinstance(error.schema, dict) else {}


def _semantic_problems(document: dict[str, Any], lines: dict[str, int]) -> list[TemplateProblem]:
    """What the schema cannot say: a counter defined twice would be charged twice."""
    problems = []
    seen: dict[tuple[str, ...], int] = {}
    for i, budget in enumerate(document.get("budgets") or []):
        key = ("budget", budget["per"], budget["period"], budget.get("window", "calendar"))
        if key in seen:
            problems.append(
                TemplateProblem(
                    _line_of(lines, ("budgets", i)),
                    _where(("budgets", i)),
                    f"duplicate budget per {key[1]} per {key[2]} ({key[3]}); see budgets[{seen[key]}]",
                )
            )
        seen[key] = i
    for i, limit in enumerate(document.get("rate_limits") or []):
        for metric in ("requests_per_minute", "tokens_per_minute"):
            if metric not in limit:
                continue
            rate = ("rate", limit["per"], metric)
            if rate in seen:
                problems.append(
                    TemplateProblem(
                        _line_of(lines, ("rate_limits", i, metric)),
                        _where(("rate_limits", i, metric)),
                        f"duplicate {metric} per {limit['per']}; see rate_limits[{seen[rate]}]",
                    )
                )
            seen[rate] = i
    return problems


# -- versions in the store ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    current_version: int | None
    next_version: int | None  # None when nothing would change
    diff: str
    changed: bool
    template: LoadedTemplate = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current_version": self.current_version,
            "next_version": self.next_version,
            "changed": self.changed,
            "hash": self.template.hash,
            "source": self.template.source,
            "diff": self.diff,
        }


def unified_diff(old: str, new: str, name: str, old_version: int | None, new_version: int | None) -> str:
    before = f"{name} v{old_version}" if old_version else "/dev/null"
    after = f"{name} v{new_version}" if new_version else f"{name} (unchanged)"
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True) if old else [],
            _terminated(new).splitlines(keepends=True),
            fromfile=before,
            tofile=after,
        )
    )


def _terminated(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"


def bump_policy_version(tx: Tx) -> int:
    """Every policy change bumps one counter; the Bridge compares it on each token lookup."""
    tx.execute("UPDATE policy_state SET version = version + 1 WHERE id = 1")
    row = tx.one("SELECT version FROM policy_state WHERE id = 1")
    return int(row["version"]) if row else 0


def lock_policy(tx: Tx) -> None:
    """Serialize policy changes (SQLite's BEGIN IMMEDIATE already does)."""
    if tx.db.dialect == "postgresql":
        tx.execute("SELECT version FROM policy_state WHERE id = 1 FOR UPDATE")


class TemplateStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def plan(self, content: str, source: str = "<template>") -> Plan:
        """What `apply` would do; changes nothing."""
        template = load_template(content, source)
        current = self.db.query_one(
            "SELECT v.version, v.content, v.hash FROM templates t JOIN template_versions v"
            " ON v.name = t.name AND v.version = t.version WHERE t.name = ?",
            (template.name,),
        )
        return self._plan(template, current)

    @staticmethod
    def _plan(template: LoadedTemplate, current: Row | None) -> Plan:
        if current is not None and current["hash"] == template.hash:
            return Plan(template.name, int(current["version"]), None, "", False, template)
        old_version = int(current["version"]) if current else None
        new_version = (old_version or 0) + 1
        diff = unified_diff(
            current["content"] if current else "", template.content, template.name, old_version, new_version
        )
        return Plan(template.name, old_version, new_version, diff, True, template)

    def apply(self, content: str, source: str = "<template>", *, actor: Actor) -> Plan:
        """Store a new version if the content changed, with its `admin.template.apply` event."""
        template = load_template(content, source)
        with self.db.transaction() as tx:
            lock_policy(tx)
            current = tx.one(
                "SELECT v.version, v.content, v.hash FROM templates t JOIN template_versions v"
                " ON v.name = t.name AND v.version = t.version WHERE t.name = ?",
                (template.name,),
            )
            plan = self._plan(template, current)
            if not plan.changed:
                return plan
            version = plan.next_version
            now = now_us()
            event = Event(
                kind="admin.template.apply",
                actor_user=actor.user_id,
                resource=f"template:{template.name}",
                details={
                    "by": actor.name,
                    "name": template.name,
                    "version": version,
                    "previous_version": plan.current_version,
                    "hash": template.hash,
                    "source": source,
                    "diff": plan.diff,
                },
                ts=now,
            )
            tx.execute(
                "INSERT INTO template_versions (name, version, hash, source, content, document, lines,"
                " created_at, created_by, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    template.name,
                    version,
                    template.hash,
                    source,
                    content,
                    orjson.dumps(template.document).decode(),
                    orjson.dumps(template.lines).decode(),
                    now,
                    actor.name,
                    event.id,
                ),
            )
            if current is None:
                tx.execute(
                    "INSERT INTO templates (name, version, hash, max_token_ttl_s, updated_at, updated_by)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (template.name, version, template.hash, template.max_ttl_s, now, actor.name),
                )
            else:
                tx.execute(
                    "UPDATE templates SET version = ?, hash = ?, max_token_ttl_s = ?, updated_at = ?,"
                    " updated_by = ? WHERE name = ?",
                    (version, template.hash, template.max_ttl_s, now, actor.name, template.name),
                )
            bump_policy_version(tx)
            append_events(tx, [event])
        return plan

    def list(self) -> list[Row]:
        return self.db.query(
            "SELECT t.name, t.version, t.hash, t.max_token_ttl_s, t.updated_at, t.updated_by, v.source"
            " FROM templates t JOIN template_versions v ON v.name = t.name AND v.version = t.version"
            " ORDER BY t.name"
        )

    def show(self, name: str, version: int | None = None) -> Row:
        if version is None:
            row = self.db.query_one(
                "SELECT v.* FROM templates t JOIN template_versions v ON v.name = t.name"
                " AND v.version = t.version WHERE t.name = ?",
                (name,),
            )
        else:
            row = self.db.query_one(
                "SELECT * FROM template_versions WHERE name = ? AND version = ?", (name, version)
            )
        if row is None:
            what = f"template {name!r}" + (f" version {version}" if version is not None else "")
            raise TemplateNotFound(f"no {what}")
        row["document"] = orjson.loads(row["document"])
        row.pop("lines", None)
        versions = self.db.query(
            "SELECT version, hash, created_at, created_by FROM template_versions WHERE name = ?"
            " ORDER BY version",
            (name,),
        )
        row["versions"] = versions
        return row

    def current(self) -> builtins.list[LoadedTemplate]:
        """The current version of every template, as stored (no re-parsing)."""
        rows = self.db.query(
            "SELECT v.name, v.source, v.content, v.document, v.lines, v.hash, v.version FROM templates t"
            " JOIN template_versions v ON v.name = t.name AND v.version = t.version ORDER BY t.name"
        )
        return [stored_template(r) for r in rows]


def stored_template(row: Row) -> LoadedTemplate:
    return LoadedTemplate(
        name=row["name"],
        source=row["source"] or f"template:{row['name']}",
        content=row["content"],
        document=orjson.loads(row["document"]),
        lines=orjson.loads(row["lines"]),
        hash=row["hash"],
    )
