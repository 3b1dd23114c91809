"""Settings for single sign-on with OpenID Connect (`[oidc]` in the configuration file).

Attached to the main settings as `Settings.oidc: OIDCSettings | None = None`: no `[oidc]` table, no SSO.
Same conventions as `gatehouse.config`: unknown keys are refused, the client secret may be `env:NAME` or
`file:PATH` and is held as a `SecretStr`. Durations are seconds or `30m` / `12h` / `7d`.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gatehouse.identity.service import Role
from gatehouse.timeutil import parse_duration

_LOOPBACK_NAMES = {"localhost"}


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{what} must be an absolute https:// URL")
    if parts.scheme == "http" and not is_loopback_url(url):
        raise ValueError(f"{what} must use https:// (plain http is accepted only on a loopback address)")
    if parts.fragment:
        raise ValueError(f"{what} must not have a #fragment")
    return url


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    return value


class OIDCSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The provider's issuer identifier, exactly as it appears in its discovery document and ID tokens
    # (discovery: `<issuer>/.well-known/openid-configuration`).
    issuer: str
    client_id: Annotated[str, Field(min_length=1)]
    # None: a public client (PKCE only, token_endpoint_auth_method `none`).
    client_secret: SecretStr | None = None
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] | None = None
    # Where the provider sends the browser back: this server's `/auth/callback`, as registered at the
    # provider. Its scheme decides whether cookies are `Secure` (https) or not (http, loopback only).
    redirect_url: str
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email", "groups"])
    # The claim whose value becomes the Gatehouse user name; `email` is the fallback when it is absent.
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    # Provider group -> Gatehouse role. A person in several mapped groups gets the highest role
    # (owner > admin > auditor > template_admin > member).
    role_mapping: dict[str, Role] = Field(default_factory=dict)
    default_role: Role = "member"
    # Refuse the login when none of the person's groups is in `role_mapping`.
    require_group_match: bool = False
    # The claim teams are read from (default: `groups_claim`) and provider value -> Gatehouse team name.
    # Values not in `team_mapping` are ignored.
    team_claim: str | None = None
    team_mapping: dict[str, str] = Field(default_factory=dict)
    # Ask the userinfo endpoint for claims the ID token does not carry (many providers put groups there).
    use_userinfo: bool = True
    # Let a provider identity take over an existing Gatehouse user of the same name (created with the CLI
    # or the API) on its first login. Off: such a login is refused, so a provider account cannot claim a
    # local admin's name.
    link_existing_users: bool = False
    session_ttl: Annotated[int, Field(ge=1, le=90 * 86400)] = 12 * 3600
    # How long a started login (state, nonce, PKCE verifier) stays valid.
    login_ttl: Annotated[int, Field(ge=10, le=3600)] = 600
    http_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, url: str) -> str:
        _check_url(url, "the issuer")
        if urlsplit(url).query:
            raise ValueError("the issuer must not have a query string")
        return url

    @field_validator("redirect_url")
    @classmethod
    def _redirect_url(cls, url: str) -> str:
        return _check_url(url, "the redirect URL")

    @field_validator("client_secret", mode="before")
    @classmethod
    def _resolve_secret(cls, value: Any, info: ValidationInfo) -> Any:
        # Imported here, not at the top: config.py imports this module for `Settings.oidc`.
        from gatehouse.config import resolve_secret_reference

        environ = (info.context or {}).get("environ", os.environ)
        return resolve_secret_reference(value, environ) if isinstance(value, str) else value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, scopes: list[str]) -> list[str]:
        if "openid" not in scopes:
            raise ValueError("must include 'openid'")
        if any(not s or " " in s for s in scopes):
            raise ValueError("each scope must be a non-empty word without spaces")
        return scopes

    @field_validator("session_ttl", "login_ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _seconds(value)

    @model_validator(mode="after")
    def _client_auth(self) -> OIDCSettings:
        method = self.token_endpoint_auth_method
        if method is None:
            method = "none" if self.client_secret is None else "client_secret_basic"
            object.__setattr__(self, "token_endpoint_auth_method", method)
        if method != "none" and self.client_secret is None:
            raise ValueError(f"token_endpoint_auth_method {method!r} needs a client_secret")
        if self.require_group_match and not self.role_mapping:
            raise ValueError("require_group_match needs a role_mapping")
        return self

    @property
    def secure_cookies(self) -> bool:
        """Cookies are `Secure` (and `__Host-` prefixed) whenever this server is reached over https."""
        return urlsplit(self.redirect_url).scheme == "https"

    @property
    def auth_method(self) -> Literal["client_secret_basic", "client_secret_post", "none"]:
        return self.token_endpoint_auth_method or "none"

    @property
    def effective_team_claim(self) -> str:
        return self.team_claim or self.groups_claim
