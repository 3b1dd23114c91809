"""Settings of the audit trail's integrity features: retention and the checkpoint signing key.

Attached to the main settings as `audit.retention` (a `RetentionSettings` table) and `audit.signing_key`
(a `SigningKey`); see docs/audit.md, "Settings".
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

_KIND_PATTERN = re.compile(r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$")


class RetentionSettings(BaseModel):
    """How long events are kept, per kind. 0 days means forever."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Run pruning in the server, every `interval_s`. The CLI (`gatehouse audit prune`) works either way.
    enabled: bool = True
    default_days: Annotated[int, Field(ge=0)] = 60
    # Per-kind overrides: an exact kind (`llm.request`) or a prefix (`llm.*`, `admin.*`); the exact kind
    # wins, then the longest prefix, then `default_days`.
    kinds: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    interval_s: Annotated[float, Field(gt=0)] = 3600.0
    # Events pruned per transaction: small, so writers never wait long for the lock.
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # Delete the leading run of pruned events for good, anchored by a checkpoint.
    compact: bool = True

    @field_validator("kinds")
    @classmethod
    def _kind_patterns(cls, kinds: dict[str, int]) -> dict[str, int]:
        for pattern in kinds:
            if not _KIND_PATTERN.match(pattern):
                raise ValueError(
                    f"{pattern!r} is not an event kind (llm.request) or a prefix of kinds (llm.*)"
                )
        return kinds

    def days_for(self, kind: str) -> int:
        """Days an event of `kind` is kept (0 = forever)."""
        return _days_for(tuple(sorted(self.kinds.items())), self.default_days, kind)


@lru_cache(maxsize=4096)
def _days_for(rules: tuple[tuple[str, int], ...], default: int, kind: str) -> int:
    best: tuple[int, int] | None = None  # (length of the matching prefix, days)
    for pattern, days in rules:
        if pattern == kind:
            return days
        if pattern == "*":
            prefix = ""
        elif pattern.endswith(".*"):
            prefix = pattern[:-1]  # "llm." matches llm.request, llm.x.y
        else:
            continue
        if kind.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), days)
    return best[1] if best is not None else default


def _signing_key(value: Any, info: ValidationInfo) -> Any:
    """`env:NAME` / `file:PATH` / the key itself; checked to be an Ed25519 key at load time."""
    if value is None or isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string: file:PATH, env:NAME, or the key (PEM or base64 seed)")
    # Imported here: gatehouse.config imports this module.
    from gatehouse.audit.checkpoints import load_private_key
    from gatehouse.config import resolve_secret_reference

    environ = (info.context or {}).get("environ", os.environ)
    text = resolve_secret_reference(value, environ)
    load_private_key(text)  # raises ValueError naming the problem (never the key)
    return SecretStr(text)


# The Ed25519 key that signs checkpoints: `audit.signing_key`. None: checkpoints are recorded unsigned.
SigningKey = Annotated[SecretStr | None, BeforeValidator(_signing_key)]
