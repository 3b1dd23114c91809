"""Events as OCSF API Activity records (class_uid 6003, category Application Activity), for SIEMs that
ingest the Open Cybersecurity Schema Framework (Amazon Security Lake, Splunk, Sentinel, ...).

The mapping (docs/export.md has the table): who (`actor.user` with the token as `credential_uid`, the agent
as `actor.app_uid`, the session), what (`api.operation` = the event kind, `resources`), how it ended
(`status_id`, `status_code`, `severity_id` from the decision), when (`time`, milliseconds), and the event's
identity (`metadata.uid` = event id, `metadata.sequence` = its place in the chain). Everything else,
including the hash chain links and the kind-specific details, is kept under `unmapped`.
"""

from __future__ import annotations

from typing import Any

from gatehouse import __version__
from gatehouse.audit.events import Event
from gatehouse.timeutil import iso

OCSF_VERSION = "1.6.0"
CLASS_UID = 6003
CATEGORY_UID = 6

_ACTIVITIES = {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_SEVERITIES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
# decision -> (status_id, status, severity_id)
_DECISIONS: dict[str, tuple[int, str, int]] = {
    "allow": (1, "Success", 1),
    "deny": (2, "Failure", 3),
    "error": (2, "Failure", 4),
    "pending": (99, "Pending", 1),
}


def activity_id(kind: str) -> int:
    """CRUD of the API call an event records."""
    verb = kind.rsplit(".", 1)[-1]
    if kind == "llm.request" or verb in ("create", "add", "grant", "approve", "request"):
        return 1
    if kind == "llm.api" or verb in ("read", "list", "get", "show", "export"):
        return 2
    if verb in ("update", "set", "change", "enable", "disable", "rotate"):
        return 3
    if verb in ("delete", "revoke", "remove"):
        return 4
    return 99


def to_ocsf(event: Event) -> dict[str, Any]:
    details = event.details
    activity = activity_id(event.kind)
    status_id, status, severity_id = _DECISIONS.get(event.decision, (0, "Unknown", 0))

    user: dict[str, Any] = {}
    if event.actor_user is not None:
        user["uid"] = event.actor_user
        user["type_id"] = 1
        user["type"] = "User"
    if event.actor_token is not None:
        user["credential_uid"] = event.actor_token
    actor: dict[str, Any] = {}
    if user:
        actor["user"] = user
    if event.actor_agent is not None:
        actor["app_uid"] = event.actor_agent
        actor["app_name"] = "agent"
    if event.session is not None:
        actor["session"] = {"uid": event.session}

    service = event.kind.split(".", 1)[0]
    api: dict[str, Any] = {"operation": event.kind, "service": {"name": f"gatehouse.{service}"}}
    api["request"] = {"uid": event.parent if event.kind == "llm.response" and event.parent else event.id}
    http_status = details.get("status")
    error = details.get("error") or details.get("reason")
    response: dict[str, Any] = {}
    if isinstance(http_status, int):
        response["code"] = http_status
    if error:
        response["error"] = str(event.decision)
        response["error_message"] = str(error)
    if isinstance(details.get("response_id"), str):
        response["uid"] = details["response_id"]
    if response:
        api["response"] = response

    src: dict[str, Any] = {}
    if isinstance(details.get("remote"), str):
        src["ip"] = details["remote"]
    if isinstance(details.get("client"), str):
        src["name"] = details["client"]
    if not src:
        src["name"] = "gatehouse"

    record: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity,
        "activity_name": _ACTIVITIES[activity] if activity != 99 else event.kind,
        "type_uid": CLASS_UID * 100 + activity,
        "type_name": f"API Activity: {_ACTIVITIES[activity]}",
        "time": event.ts // 1000,
        "severity_id": severity_id,
        "severity": _SEVERITIES.get(severity_id, "Unknown"),
        "status_id": status_id,
        "status": status,
        "message": f"{event.kind} {event.decision}" + (f" {event.resource}" if event.resource else ""),
        "metadata": {
            "uid": event.id,
            "version": OCSF_VERSION,
            "product": {"name": "Gatehouse", "vendor_name": "Gatehouse", "version": __version__},
            "event_code": event.kind,
            "sequence": event.seq,
            "original_time": iso(event.ts),
            "log_name": "audit",
            **({"correlation_uid": event.session} if event.session else {}),
        },
        "actor": actor,
        "api": api,
        "src_endpoint": src,
        "unmapped": {
            "decision": event.decision,
            "on_behalf_of": event.on_behalf_of,
            "workspace": event.workspace,
            "parent": event.parent,
            "ts_us": event.ts,
            "prev_hash": event.prev_hash,
            "hash": event.hash,
            "details": details,
        },
    }
    if http_status is not None:
        record["status_code"] = str(http_status)
    if error:
        record["status_detail"] = str(error)
    if event.resource:
        kind, _, name = event.resource.partition(":")
        record["resources"] = [{"uid": event.resource, "type": kind, "name": name or event.resource}]
    return record
