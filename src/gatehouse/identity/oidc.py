"""The relying-party side of OpenID Connect: discovery, PKCE, the code exchange, ID token validation,
and mapping a person's claims to a Gatehouse user name, role and teams.

JOSE (JWS signatures, JWK sets, claim checks) is `joserfc`; HTTP is the aiohttp client the Bridge uses.
What is checked, following OpenID Connect Core 3.1.3.7 and RFC 9700:

- the discovery document's `issuer` is exactly the configured issuer, and it offers PKCE S256;
- the ID token is signed with an asymmetric algorithm the provider announces, by a key in its JWKS
  (an unknown `kid` refetches the JWKS once, so key rotation needs no restart); `alg: none` and HMAC are
  refused;
- `iss` is the issuer, `aud` holds the client id (and `azp` is the client id when present or when there
  are several audiences), `exp` is in the future, `iat` and `nbf` are not, `sub` is present, `nonce` is
  the one sent with this login, `at_hash` (when present) matches the access token;
- userinfo claims are used only when their `sub` is the ID token's.

This module holds no state about logins; `web_sessions.py` binds state, nonce and verifier to a browser.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gatehouse.identity.oidc_settings import OIDCSettings
from gatehouse.identity.service import ROLES, Role

log = logging.getLogger(__name__)

# Asymmetric signature algorithms only: an HMAC-signed ID token is keyed with the client secret, which
# would let anyone holding the secret mint identities.
SIGNING_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "Ed25519",
    "EdDSA",
)
_HASH_FOR_ALG = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
CLOCK_SKEW_S = 60
_MAX_DOCUMENT_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")  # the user-name rule of identity/service.py


class OIDCError(Exception):
    """A login that cannot go on. `message` is shown to the person; `reason` is a short code for the
    audit trail; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        # The provider's subject, when a validly signed ID token named one (for the audit trail).
        self.subject = subject


# -- PKCE (RFC 7636) and login secrets --------------------------------------------------------------


def new_code_verifier() -> str:
    """43-128 characters from the unreserved set; 64 here (384 random bits)."""
    return secrets.token_urlsafe(48)


def s256_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


# -- the provider ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    signing_algorithms: tuple[str, ...]
    iss_parameter_supported: bool

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], expected_issuer: str) -> ProviderMetadata:
        issuer = doc.get("issuer")
        if issuer != expected_issuer:
            raise OIDCError(
                502,
                "discovery_issuer_mismatch",
                f"the provider's discovery document names issuer {issuer!r}, not the configured"
                f" {expected_issuer!r}; set oidc.issuer to the exact value",
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise OIDCError(
                    502, "discovery_incomplete", f"the provider's discovery document has no {key}"
                )
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OIDCError(502, "discovery_no_pkce", "the provider does not support PKCE with S256")
        announced = doc.get("id_token_signing_alg_values_supported")
        if isinstance(announced, list):
            algs = tuple(a for a in SIGNING_ALGORITHMS if a in announced)
        else:
            algs = ("RS256",)  # the default of OpenID Connect Discovery
        if not algs:
            raise OIDCError(
                502,
                "discovery_no_algorithm",
                f"the provider signs ID tokens only with {announced}; Gatehouse accepts"
                f" {', '.join(SIGNING_ALGORITHMS)}",
            )
        return cls(
            issuer=issuer,
            authorization_endpoint=doc["authorization_endpoint"],
            token_endpoint=doc["token_endpoint"],
            jwks_uri=doc["jwks_uri"],
            userinfo_endpoint=_optional_str(doc.get("userinfo_endpoint")),
            end_session_endpoint=_optional_str(doc.get("end_session_endpoint")),
            signing_algorithms=algs,
            iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
        )


@dataclass(frozen=True, slots=True)
class Tokens:
    id_token: str
    access_token: str | None


@dataclass(frozen=True, slots=True)
class Identity:
    """A person the provider vouched for, after every check."""

    issuer: str
    subject: str
    claims: dict[str, Any]


class OIDCClient:
    """Talks to one provider. Discovery and the JWKS are fetched on first use and cached; the JWKS is
    refetched when a token names a key it does not hold (at most once per `jwks_min_refresh_s`)."""

    metadata_max_age_s = 3600.0
    jwks_max_age_s = 3600.0

    def __init__(self, settings: OIDCSettings, *, jwks_min_refresh_s: float = 10.0) -> None:
        self.settings = settings
        self.jwks_min_refresh_s = jwks_min_refresh_s
        self._http: aiohttp.ClientSession | None = None
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0
        self._metadata_lock = asyncio.Lock()
        self._jwks_lock = asyncio.Lock()

    @property
    def cached_metadata(self) -> ProviderMetadata | None:
        """The discovery document if it was fetched already (no network)."""
        return self._metadata

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- HTTP --------------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.http_timeout_s),
                headers={"user-agent": "gatehouse-oidc"},
            )
        return self._http

    async def _get_json(self, url: str, what: str, headers: Mapping[str, str] | None = None) -> Any:
        try:
            async with self._client().get(url, headers=headers, allow_redirects=False) as resp:
                body = await resp.content.read(_MAX_DOCUMENT_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OIDCError(
                502, "provider_unreachable", f"cannot fetch the {what} from {url}: {exc!r}"
            ) from None
        if status != 200:
            raise OIDCError(502, "provider_error", f"the {what} at {url} answered HTTP {status}")
        return _parse_json(body, what)

    # -- discovery and keys ------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        now = time.monotonic()
        if self._metadata is not None and now - self._metadata_at < self.metadata_max_age_s:
            return self._metadata
        async with self._metadata_lock:
            if self._metadata is None or time.monotonic() - self._metadata_at >= self.metadata_max_age_s:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                doc = await self._get_json(url, "discovery document")
                if not isinstance(doc, dict):
                    raise OIDCError(502, "discovery_invalid", "the discovery document is not a JSON object")
                self._metadata = ProviderMetadata.from_document(doc, self.settings.issuer)
                self._metadata_at = time.monotonic()
            return self._metadata

    async def _keys(self, kid: str | None) -> KeySet:
        """The provider's signing keys, refreshed when stale or when `kid` is not among them."""
        jwks = self._jwks
        fresh = jwks is not None and time.monotonic() - self._jwks_at < self.jwks_max_age_s
        if fresh and jwks is not None and (kid is None or _has_kid(jwks, kid)):
            return jwks
        async with self._jwks_lock:
            jwks, age = self._jwks, time.monotonic() - self._jwks_at
            stale = jwks is None or age >= self.jwks_max_age_s
            unknown = jwks is not None and kid is not None and not _has_kid(jwks, kid)
            if stale or (unknown and age >= self.jwks_min_refresh_s):
                meta = await self.metadata()
                doc = await self._get_json(meta.jwks_uri, "JWKS")
                self._jwks = _signing_keys(doc)
                self._jwks_at = time.monotonic()
                log.info("fetched the provider's JWKS: %d signing keys", len(self._jwks.keys))
            assert self._jwks is not None
            return self._jwks

    # -- the flow ----------------------------------------------------------------------------------

    async def authorization_url(
        self, *, state: str, nonce: str, code_verifier: str, login_hint: str | None = None
    ) -> str:
        meta = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_url,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": s256_challenge(code_verifier),
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        sep = "&" if urlsplit(meta.authorization_endpoint).query else "?"
        return meta.authorization_endpoint + sep + urlencode(params)

    async def check_response_issuer(self, iss: str | None) -> None:
        """RFC 9207: the authorization response names its issuer (mix-up attack defence)."""
        meta = await self.metadata()
        if iss is None:
            if meta.iss_parameter_supported:
                raise OIDCError(400, "iss_missing", "the provider's response has no iss parameter")
            return
        if iss != meta.issuer:
            raise OIDCError(
                400, "iss_mismatch", f"the response comes from issuer {iss!r}, not {meta.issuer!r}"
            )

    async def exchange_code(self, code: str, code_verifier: str) -> Tokens:
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_url,
            "code_verifier": code_verifier,
        }
        headers = {"accept": "application/json"}
        method = self.settings.auth_method
        secret = self.settings.client_secret.get_secret_value() if self.settings.client_secret else ""
        if method == "client_secret_basic":
            # RFC 6749 2.3.1: both parts are form-urlencoded before the base64.
            pair = f"{quote(self.settings.client_id, safe='')}:{quote(secret, safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif method == "client_secret_post":
            form.update(client_id=self.settings.client_id, client_secret=secret)
        else:
            form["client_id"] = self.settings.client_id
        try:
            async with self._client().post(
                meta.token_endpoint, data=form, headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.content.read(_MAX_DOCUMENT_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OIDCError(
                502, "provider_unreachable", f"cannot reach the token endpoint: {exc!r}"
            ) from None
        data = _parse_json(body, "token response")
        if status != 200 or not isinstance(data, dict):
            error = data.get("error") if isinstance(data, dict) else None
            description = data.get("error_description") if isinstance(data, dict) else None
            raise OIDCError(
                401,
                "code_exchange_refused",
                f"the identity provider refused the authorization code (HTTP {status}, {error}:"
                f" {description}); start again at /auth/login",
            )
        id_token = data.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OIDCError(502, "no_id_token", "the token response has no id_token (is 'openid' a scope?)")
        token_type = data.get("token_type")
        access = data.get("access_token")
        if access is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
            raise OIDCError(502, "token_type", f"unsupported token_type {token_type!r}")
        return Tokens(id_token=id_token, access_token=access if isinstance(access, str) else None)

    async def verify_id_token(
        self, id_token: str, *, nonce: str, access_token: str | None = None, now: float | None = None
    ) -> Identity:
        meta = await self.metadata()
        try:
            header = jws.extract_compact(id_token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError):
            raise OIDCError(401, "id_token_malformed", "the ID token is not a JWS compact token") from None
        alg = header.get("alg")
        if alg not in meta.signing_algorithms:
            raise OIDCError(
                401,
                "id_token_algorithm",
                f"the ID token is signed with {alg!r}; accepted: {', '.join(meta.signing_algorithms)}",
            )
        kid = header.get("kid")
        keys = await self._keys(kid if isinstance(kid, str) else None)
        if isinstance(kid, str) and not _has_kid(keys, kid):
            raise OIDCError(
                401,
                "id_token_unknown_key",
                f"the ID token is signed with key {kid!r}, which the provider's JWKS does not publish",
            )
        claims = _verify_signature(id_token, keys, alg, kid if isinstance(kid, str) else None)
        try:
            _check_claims(
                claims,
                issuer=meta.issuer,
                client_id=self.settings.client_id,
                nonce=nonce,
                now=int(now if now is not None else time.time()),
            )
        except OIDCError as exc:
            sub = claims.get("sub")
            exc.subject = sub if isinstance(sub, str) else None
            raise
        at_hash = claims.get("at_hash")
        if (
            access_token is not None
            and at_hash is not None
            and not hmac.compare_digest(str(at_hash).encode(), _at_hash(access_token, alg).encode())
        ):
            raise OIDCError(401, "id_token_at_hash", "the ID token's at_hash does not match the access token")
        return Identity(issuer=meta.issuer, subject=str(claims["sub"]), claims=claims)

    async def userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        meta = await self.metadata()
        if meta.userinfo_endpoint is None:
            return {}
        doc = await self._get_json(
            meta.userinfo_endpoint,
            "userinfo",
            headers={"authorization": f"Bearer {access_token}", "accept": "application/json"},
        )
        if not isinstance(doc, dict):
            raise OIDCError(502, "userinfo_invalid", "the userinfo response is not a JSON object")
        if doc.get("sub") != subject:
            raise OIDCError(401, "userinfo_subject", "the userinfo response is about another subject")
        return doc

    async def login(self, code: str, *, code_verifier: str, nonce: str) -> Identity:
        """The whole back channel of a login: exchange, validate, enrich with userinfo."""
        tokens = await self.exchange_code(code, code_verifier)
        identity = await self.verify_id_token(tokens.id_token, nonce=nonce, access_token=tokens.access_token)
        if self.settings.use_userinfo and tokens.access_token is not None:
            extra = await self.userinfo(tokens.access_token, identity.subject)
            # The signed ID token wins where both speak.
            identity = Identity(identity.issuer, identity.subject, {**extra, **identity.claims})
        return identity


# -- claims -> Gatehouse ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mapped:
    name: str
    email: str | None
    role: Role
    groups: list[str]
    # team name -> the provider value it came from
    teams: dict[str, str] = field(default_factory=dict)
    matched_role_groups: list[str] = field(default_factory=list)


def map_identity(identity: Identity, settings: OIDCSettings) -> Mapped:
    """User name, role and teams for this person, or OIDCError (403) when the login must be refused."""
    claims = identity.claims
    name = claims.get(settings.username_claim)
    if not isinstance(name, str) or not name:
        name = claims.get("email")
    if not isinstance(name, str) or not name:
        raise OIDCError(
            403,
            "no_username",
            f"the identity provider sent neither {settings.username_claim!r} nor 'email' for this person",
        )
    if not _NAME.match(name):
        raise OIDCError(
            403,
            "invalid_username",
            f"the identity provider's user name {name!r} is not a valid Gatehouse user name (1-128 letters,"
            " digits, '.', '_', '@' or '-')",
        )
    email = claims.get("email")
    groups = claim_values(claims.get(settings.groups_claim))
    matched = [g for g in groups if g in settings.role_mapping]
    if not matched and settings.require_group_match:
        raise OIDCError(
            403,
            "no_group_match",
            f"{name} is in none of the identity provider groups that may use Gatehouse",
        )
    role = highest_role([settings.role_mapping[g] for g in matched] or [settings.default_role])
    team_values = (
        groups
        if settings.effective_team_claim == settings.groups_claim
        else claim_values(claims.get(settings.effective_team_claim))
    )
    teams: dict[str, str] = {}
    for value in team_values:
        team = settings.team_mapping.get(value)
        if team is not None and team not in teams:
            teams[team] = value
    return Mapped(
        name=name,
        email=email if isinstance(email, str) else None,
        role=role,
        groups=groups,
        teams=teams,
        matched_role_groups=matched,
    )


def highest_role(roles: Sequence[Role]) -> Role:
    """`ROLES` is ordered from most to least privileged."""
    return min(roles, key=ROLES.index)


def claim_values(value: Any) -> list[str]:
    """A groups-like claim as a list of strings: a JSON array, or one string."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


# -- helpers ----------------------------------------------------------------------------------------


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse_json(body: bytes, what: str) -> Any:
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise OIDCError(502, "provider_error", f"the {what} is larger than {_MAX_DOCUMENT_BYTES} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OIDCError(502, "provider_error", f"the {what} is not JSON") from None


def _signing_keys(doc: Any) -> KeySet:
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise OIDCError(502, "jwks_invalid", "the provider's JWKS is not a key set")
    keys = [k for k in doc["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig"]
    try:
        return KeySet.import_key_set({"keys": keys})
    except (JoseError, ValueError) as exc:
        raise OIDCError(
            502, "jwks_invalid", f"the provider's JWKS has no usable signing key: {exc}"
        ) from None


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


def _verify_signature(token: str, keys: KeySet, alg: str, kid: str | None) -> dict[str, Any]:
    # With a kid joserfc picks the key; without one, any of the provider's keys may have signed it.
    candidates: list[Any] = [keys] if kid is not None else list(keys.keys)
    for key in candidates:
        try:
            return jwt.decode(token, key, algorithms=[alg]).claims
        except JoseError:
            continue
        except ValueError:  # a key of another type than the algorithm needs
            continue
    raise OIDCError(401, "id_token_signature", "the ID token's signature does not verify")


def _check_claims(claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str, now: int) -> None:
    def fail(reason: str, message: str) -> OIDCError:
        return OIDCError(401, reason, message)

    if claims.get("iss") != issuer:
        raise fail("id_token_issuer", f"the ID token's issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise fail("id_token_audience", f"the ID token is not meant for client {client_id!r} (aud={aud!r})")
    azp = claims.get("azp")
    if (azp is not None or len(audiences) > 1) and azp != client_id:
        raise fail("id_token_azp", f"the ID token's authorized party {azp!r} is not {client_id!r}")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise fail("id_token_subject", "the ID token has no subject")
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    if (
        not isinstance(exp, int | float)
        or not isinstance(iat, int | float)
        or not _number(exp)
        or not _number(iat)
    ):
        raise fail("id_token_times", "the ID token lacks a numeric exp or iat")
    if exp <= now - CLOCK_SKEW_S:
        raise fail("id_token_expired", "the ID token has expired (check this server's clock)")
    if iat > now + CLOCK_SKEW_S:
        raise fail("id_token_times", "the ID token was issued in the future (check this server's clock)")
    if nbf is not None and (not _number(nbf) or nbf > now + CLOCK_SKEW_S):
        raise fail("id_token_times", "the ID token is not valid yet (check this server's clock)")
    got = claims.get("nonce")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
        raise fail(
            "nonce_mismatch",
            "the ID token's nonce does not match this login's nonce; the token may be replayed",
        )


def _number(value: Any) -> TypeGuard[int | float]:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _at_hash(access_token: str, alg: str) -> str:
    hash_fn = hashlib.sha512 if alg in ("EdDSA", "Ed25519") else _HASH_FOR_ALG[alg[-3:]]
    digest = hash_fn(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")
