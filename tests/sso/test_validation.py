"""What the relying party refuses, case by case: ID tokens no honest provider would send, discovery
documents it must not trust, claims that must not become a user, settings that must not start."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey
from pydantic import SecretStr, ValidationError

from gatehouse.api.oidc import CookieNames, _local_path, _set_cookie
from gatehouse.identity.oidc import (
    Identity,
    OIDCClient,
    OIDCError,
    ProviderMetadata,
    highest_role,
    map_identity,
    s256_challenge,
)
from gatehouse.identity.oidc_settings import OIDCSettings

ISSUER = "https://idp.example.test"
CLIENT = "gatehouse"
NONCE = "n-0123456789"


def settings(**overrides: Any) -> OIDCSettings:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": CLIENT,
        "client_secret": SecretStr("s3cret"),
        "redirect_url": "https://gatehouse.example.test/auth/callback",
    }
    return OIDCSettings.model_validate({**base, **overrides})


@pytest.fixture(scope="module")
def rsa() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})


@pytest.fixture(scope="module")
def ec() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture
def client(rsa: RSAKey, ec: ECKey) -> OIDCClient:
    c = OIDCClient(settings(), jwks_min_refresh_s=3600)
    c._metadata = ProviderMetadata(
        issuer=ISSUER,
        authorization_endpoint=f"{ISSUER}/authorize",
        token_endpoint=f"{ISSUER}/token",
        jwks_uri=f"{ISSUER}/jwks",
        userinfo_endpoint=None,
        end_session_endpoint=None,
        signing_algorithms=("RS256", "ES256"),
        iss_parameter_supported=True,
    )
    c._metadata_at = c._jwks_at = time.monotonic()
    c._jwks = KeySet.import_key_set({"keys": [rsa.as_dict(private=False), ec.as_dict(private=False)]})
    return c


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "person-1", "iat": now, "exp": now + 300, "nonce": NONCE}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, body: dict[str, Any], alg: str = "RS256", kid: str | None = "rsa-1") -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, body, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(client: OIDCClient, token: str, reason: str, access_token: str | None = None) -> OIDCError:
    with pytest.raises(OIDCError) as exc:
        await client.verify_id_token(token, nonce=NONCE, access_token=access_token)
    assert exc.value.reason == reason, exc.value.message
    return exc.value


# -- ID tokens ----------------------------------------------------------------------------------------


async def test_a_valid_id_token_yields_the_identity(client: OIDCClient, rsa: RSAKey, ec: ECKey) -> None:
    identity = await client.verify_id_token(sign(rsa, claims(groups=["g"])), nonce=NONCE)
    assert (identity.issuer, identity.subject, identity.claims["groups"]) == (ISSUER, "person-1", ["g"])
    by_ec = await client.verify_id_token(sign(ec, claims(), alg="ES256", kid="ec-1"), nonce=NONCE)
    assert by_ec.subject == "person-1"
    no_kid = await client.verify_id_token(sign(rsa, claims(), kid=None), nonce=NONCE)
    assert no_kid.subject == "person-1"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"iss": "https://other.example.test"}, "id_token_issuer"),
        ({"aud": "someone-else"}, "id_token_audience"),
        ({"aud": [CLIENT, "someone-else"]}, "id_token_azp"),  # several audiences need azp = us
        ({"azp": "someone-else"}, "id_token_azp"),
        ({"exp": int(time.time()) - 120}, "id_token_expired"),
        ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "id_token_times"),
        ({"nbf": int(time.time()) + 3600}, "id_token_times"),
        ({"exp": None}, "id_token_times"),
        ({"sub": None}, "id_token_subject"),
        ({"nonce": "another"}, "nonce_mismatch"),
        ({"nonce": None}, "nonce_mismatch"),
    ],
)
async def test_id_token_claims_are_checked(
    client: OIDCClient, rsa: RSAKey, overrides: dict[str, Any], reason: str
) -> None:
    await refused(client, sign(rsa, claims(**overrides)), reason)


async def test_a_nonce_mismatch_still_names_the_subject_for_the_trail(
    client: OIDCClient, rsa: RSAKey
) -> None:
    error = await refused(client, sign(rsa, claims(nonce="replayed")), "nonce_mismatch")
    assert error.subject == "person-1"


async def test_several_audiences_with_azp_are_accepted(client: OIDCClient, rsa: RSAKey) -> None:
    token = sign(rsa, claims(aud=[CLIENT, "api"], azp=CLIENT))
    assert (await client.verify_id_token(token, nonce=NONCE)).subject == "person-1"


async def test_unsigned_and_hmac_tokens_are_refused(client: OIDCClient) -> None:
    header = b64(json.dumps({"alg": "none"}).encode())
    unsigned = f"{header}.{b64(json.dumps(claims()).encode())}."
    await refused(client, unsigned, "id_token_algorithm")
    # HS256 keyed with the client secret: anyone holding the secret could mint identities.
    hmac_key = OctKey.import_key("s3cret" * 6)
    await refused(client, sign(hmac_key, claims(), alg="HS256", kid=None), "id_token_algorithm")
    await refused(client, "not-a-jwt", "id_token_malformed")


async def test_a_forged_signature_is_refused(client: OIDCClient) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    await refused(client, sign(impostor, claims()), "id_token_signature")
    await refused(client, sign(impostor, claims(), kid=None), "id_token_signature")


async def test_an_unknown_key_is_refused_when_the_jwks_cannot_be_refreshed_yet(client: OIDCClient) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rotated-in"})
    error = await refused(client, sign(stranger, claims(), kid="rotated-in"), "id_token_unknown_key")
    assert "rotated-in" in error.message


async def test_at_hash_binds_the_access_token(client: OIDCClient, rsa: RSAKey) -> None:
    access = "access-token-value"
    good = b64(hashlib.sha256(access.encode()).digest()[:16])
    token = sign(rsa, claims(at_hash=good))
    assert (await client.verify_id_token(token, nonce=NONCE, access_token=access)).subject == "person-1"
    await refused(client, token, "id_token_at_hash", access_token="another-access-token")


# -- discovery ----------------------------------------------------------------------------------------


def document(**overrides: Any) -> dict[str, Any]:
    doc = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "HS256"],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def test_discovery_keeps_only_asymmetric_algorithms() -> None:
    meta = ProviderMetadata.from_document(document(), ISSUER)
    assert meta.signing_algorithms == ("RS256",)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"issuer": ISSUER + "/"}, "discovery_issuer_mismatch"),
        ({"token_endpoint": None}, "discovery_incomplete"),
        ({"code_challenge_methods_supported": ["plain"]}, "discovery_no_pkce"),
        ({"id_token_signing_alg_values_supported": ["HS256", "none"]}, "discovery_no_algorithm"),
    ],
)
def test_discovery_documents_gatehouse_must_not_trust(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(OIDCError) as exc:
        ProviderMetadata.from_document(document(**overrides), ISSUER)
    assert exc.value.reason == reason


async def test_the_authorization_response_must_come_from_the_issuer(client: OIDCClient) -> None:
    await client.check_response_issuer(ISSUER)
    for iss, reason in (("https://evil.example.test", "iss_mismatch"), (None, "iss_missing")):
        with pytest.raises(OIDCError) as exc:
            await client.check_response_issuer(iss)
        assert exc.value.reason == reason


async def test_the_authorization_url_carries_pkce_state_and_nonce(client: OIDCClient) -> None:
    url = await client.authorization_url(state="st", nonce="no", code_verifier="v" * 64, login_hint="ada")
    assert url.startswith(f"{ISSUER}/authorize?response_type=code&client_id=gatehouse&")
    assert f"code_challenge={s256_challenge('v' * 64)}" in url and "code_challenge_method=S256" in url
    assert "state=st" in url and "nonce=no" in url and "login_hint=ada" in url
    # RFC 7636 appendix B
    assert (
        s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


# -- claims -> user, role, teams ----------------------------------------------------------------------


def identity(**claims_: Any) -> Identity:
    return Identity(ISSUER, "person-1", {"sub": "person-1", **claims_})


def test_the_highest_mapped_role_wins_and_teams_are_mapped() -> None:
    s = settings(
        role_mapping={"devs": "member", "auditors": "auditor", "admins": "admin", "tmpl": "template_admin"},
        team_mapping={"team-a": "alpha", "team-b": "beta"},
    )
    m = map_identity(
        identity(preferred_username="ada", groups=["devs", "tmpl", "auditors", "team-b", "x"]), s
    )
    assert (m.name, m.role, m.teams) == ("ada", "auditor", {"beta": "team-b"})
    assert m.matched_role_groups == ["devs", "tmpl", "auditors"]
    assert highest_role(["member", "owner", "admin"]) == "owner"


def test_without_a_mapped_group_the_default_role_or_a_refusal() -> None:
    assert map_identity(identity(preferred_username="bo", groups=["x"]), settings()).role == "member"
    assert map_identity(identity(preferred_username="bo"), settings(default_role="auditor")).role == "auditor"
    strict = settings(role_mapping={"admins": "admin"}, require_group_match=True)
    with pytest.raises(OIDCError) as exc:
        map_identity(identity(preferred_username="bo", groups=["x"]), strict)
    assert (exc.value.status, exc.value.reason) == (403, "no_group_match")


def test_user_names_come_from_the_configured_claim_or_the_email() -> None:
    assert map_identity(identity(preferred_username="ada", email="a@x.test"), settings()).name == "ada"
    assert map_identity(identity(email="a@x.test"), settings()).name == "a@x.test"
    assert (
        map_identity(identity(upn="ada.l", email="a@x.test"), settings(username_claim="upn")).name == "ada.l"
    )
    for bad in ({}, {"preferred_username": "Ada Lovelace"}):
        with pytest.raises(OIDCError) as exc:
            map_identity(identity(**bad), settings())
        assert exc.value.status == 403


def test_teams_from_a_separate_claim_and_a_single_string_claim() -> None:
    s = settings(team_claim="department", team_mapping={"R&D": "research"})
    m = map_identity(identity(preferred_username="ada", groups="devs", department="R&D"), s)
    assert m.groups == ["devs"] and m.teams == {"research": "R&D"}


# -- settings -------------------------------------------------------------------------------------------


def test_client_secret_from_env_or_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    base = {"issuer": ISSUER, "client_id": CLIENT, "redirect_url": "https://g.example.test/auth/callback"}
    by_env = OIDCSettings.model_validate(
        {**base, "client_secret": "env:OIDC_SECRET"}, context={"environ": {"OIDC_SECRET": "from-env"}}
    )
    by_file = OIDCSettings.model_validate({**base, "client_secret": f"file:{secret_file}"})
    assert by_env.client_secret is not None and by_env.client_secret.get_secret_value() == "from-env"
    assert by_file.client_secret is not None and by_file.client_secret.get_secret_value() == "from-file"
    assert "from-env" not in repr(by_env)
    assert by_env.auth_method == "client_secret_basic"
    assert OIDCSettings.model_validate(base).auth_method == "none"  # public client, PKCE only


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"issuer": "http://idp.example.test"}, "must use https://"),
        ({"redirect_url": "http://gatehouse.example.test/auth/callback"}, "must use https://"),
        ({"scopes": ["profile"]}, "must include 'openid'"),
        ({"role_mapping": {"admins": "superuser"}}, "role_mapping.admins"),
        ({"require_group_match": True}, "require_group_match needs a role_mapping"),
        (
            {"client_secret": None, "token_endpoint_auth_method": "client_secret_post"},
            "needs a client_secret",
        ),
        ({"session_ttl": "forever"}, "cannot read duration"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_settings_that_must_not_start(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        settings(**overrides)
    assert message in str(exc.value)


def test_durations_loopback_http_and_cookie_security() -> None:
    s = settings(session_ttl="8h", login_ttl=300)
    assert (s.session_ttl, s.login_ttl) == (8 * 3600, 300)
    assert s.secure_cookies and CookieNames.for_settings(s).session == "__Host-gh_session"
    local = settings(issuer="http://127.0.0.1:9999", redirect_url="http://localhost:8080/auth/callback")
    assert not local.secure_cookies and CookieNames.for_settings(local).session == "gh_session"

    names = CookieNames.for_settings(s)
    response = web.Response()
    _set_cookie(response, names, names.session, "ghs_x", 60, http_only=True)
    header = response.cookies[names.session].output().lower()
    assert all(flag in header for flag in ("secure", "httponly", "samesite=lax", "path=/", "max-age=60"))
    assert "domain" not in header  # a __Host- cookie must not name a domain


def test_return_to_is_a_local_path() -> None:
    assert _local_path(None) == "/auth/me" and _local_path("/ui/sessions?x=1") == "/ui/sessions?x=1"
    for bad in ("https://evil.test", "//evil.test", "/\\evil.test", "evil", "/a\nb"):
        with pytest.raises(OIDCError):
            _local_path(bad)
