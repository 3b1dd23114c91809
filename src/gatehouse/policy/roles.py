"""Who may do what in the policy layer's REST API: one table, so the docs and the tests read the same.

Roles: `owner` and `admin` run the place; `template_admin` manages templates (and reads what it needs to
write them well); `auditor` reads everything and changes nothing; `member` reads their own things.
"""

from __future__ import annotations

from gatehouse.identity.service import ROLES, Role

EVERYONE: tuple[Role, ...] = ROLES

PERMISSIONS: dict[str, tuple[Role, ...]] = {
    "templates.read": ("owner", "admin", "template_admin", "auditor"),
    "templates.write": ("owner", "admin", "template_admin"),
    # Members may ask about their own agents only.
    "policy.explain": EVERYONE,
    "prices.read": EVERYONE,
    "prices.write": ("owner", "admin"),
    # Members and template admins see their own spend only.
    "spend.read": EVERYONE,
    "spend.read_all": ("owner", "admin", "auditor"),
    "teams.read": ("owner", "admin", "auditor"),
    "teams.write": ("owner", "admin"),
}


def allowed(permission: str) -> tuple[Role, ...]:
    return PERMISSIONS[permission]
