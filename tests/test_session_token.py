"""clerk_sync.session_token with real RS256 JWTs: settings, every refusal, org claims, the claims limit, minting.

Tokens are signed by an RSA key made for the run (tests/clerk_sessions.py); minting uses a
service-account key file generated in tmp, and the minted token is decoded and its signature
checked with that key's public half. Nothing is mocked; no emulator is needed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from clerk_sessions import (
    APP_ORIGIN,
    CLERK_KEY,
    CLERK_PUBLIC_PEM,
    LOCAL_ORIGIN,
    OTHER_KEY,
    SERVICE_ACCOUNT_EMAIL,
    hs256_with_public_key,
    new_clerk_user_id,
    new_key,
    new_org_id,
    public_pem,
    session_claims,
    session_token,
    sign,
    unsigned_token,
    v1_organization,
    v2_organization,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from firebase_admin import _token_gen

from clerk_sync import session_token as tokens

pytestmark = pytest.mark.usefixtures("token_environment")

FIREBASE_AUDIENCE = "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit"


def verify(token: str) -> tokens.Session:
    """Verify with the settings the environment gives (read afresh)."""
    return tokens.verify_session_token(token, tokens.read_settings())


def rejection(token: str) -> str:
    """The reason code `token` is refused with (fails the test if it is accepted)."""
    with pytest.raises(tokens.TokenRejected) as rejected:
        verify(token)
    return rejected.value.reason


def misconfigured_variable(**environment: str | None) -> str:
    """Which variable `read_settings` names after applying `environment` (None unsets)."""
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    with pytest.raises(tokens.Misconfigured) as problem:
        tokens.read_settings()
    assert problem.value.variable in str(problem.value)
    return problem.value.variable


# --- settings -------------------------------------------------------------------------------------

PEM_FORMS = {
    "real newlines": CLERK_PUBLIC_PEM,
    "escaped newlines": CLERK_PUBLIC_PEM.strip().replace("\n", "\\n"),
    "escaped newlines in quotes": '"' + CLERK_PUBLIC_PEM.strip().replace("\n", "\\n") + '"',
    "CRLF": CLERK_PUBLIC_PEM.replace("\n", "\r\n"),
    "one line with spaces": CLERK_PUBLIC_PEM.strip().replace("\n", " "),
}


@pytest.mark.parametrize("form", sorted(PEM_FORMS))
def test_pem_public_key_is_accepted_as_people_paste_it(form: str) -> None:
    os.environ["CLERK_JWT_KEY"] = PEM_FORMS[form]
    user_id = new_clerk_user_id()

    assert verify(session_token(user_id)).user_id == user_id


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not a key",
        CLERK_PUBLIC_PEM.replace("MII", "XXX", 1),
        public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505 (the weak key is the point)
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    ],
    ids=["empty", "garbage", "corrupt", "rsa-1024", "ec"],
)
def test_unusable_public_key_names_clerk_jwt_key(key: str) -> None:
    assert misconfigured_variable(CLERK_JWT_KEY=key) == "CLERK_JWT_KEY"


def test_authorized_parties_are_required() -> None:
    assert misconfigured_variable(CLERK_AUTHORIZED_PARTIES=None) == "CLERK_AUTHORIZED_PARTIES"
    assert misconfigured_variable(CLERK_AUTHORIZED_PARTIES=" , ") == "CLERK_AUTHORIZED_PARTIES"


@pytest.mark.parametrize(
    "parties",
    [
        "*",
        "https://*.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "HTTPS://App.example.com",
        "app.example.com",
        "ftp://app.example.com",
        "https://app.example.com,*",
    ],
)
def test_wildcards_paths_and_non_origins_are_refused_as_parties(parties: str) -> None:
    assert misconfigured_variable(CLERK_AUTHORIZED_PARTIES=parties) == "CLERK_AUTHORIZED_PARTIES"


def test_parties_list_tolerates_spaces_and_empty_entries() -> None:
    os.environ["CLERK_AUTHORIZED_PARTIES"] = f" {APP_ORIGIN} ,, {LOCAL_ORIGIN},http://127.0.0.1:5173 "

    assert tokens.read_settings().authorized_parties == {APP_ORIGIN, LOCAL_ORIGIN, "http://127.0.0.1:5173"}


def test_any_party_needs_the_exact_local_only_value() -> None:
    os.environ.pop("CLERK_AUTHORIZED_PARTIES")
    os.environ["ALLOW_ANY_AUTHORIZED_PARTY"] = "true-local-only"
    user_id = new_clerk_user_id()

    assert verify(session_token(user_id, azp=None)).user_id == user_id
    assert verify(session_token(user_id, azp="https://anything.example.org")).user_id == user_id
    assert misconfigured_variable(ALLOW_ANY_AUTHORIZED_PARTY="true") == "ALLOW_ANY_AUTHORIZED_PARTY"
    assert misconfigured_variable(ALLOW_ANY_AUTHORIZED_PARTY="1") == "ALLOW_ANY_AUTHORIZED_PARTY"


def test_any_party_is_refused_on_cloud_functions_and_next_to_a_parties_list() -> None:
    os.environ["ALLOW_ANY_AUTHORIZED_PARTY"] = "true-local-only"

    assert misconfigured_variable() == "ALLOW_ANY_AUTHORIZED_PARTY"  # CLERK_AUTHORIZED_PARTIES is set too
    assert misconfigured_variable(CLERK_AUTHORIZED_PARTIES=None, K_SERVICE="clerk-firebase-token") == (
        "ALLOW_ANY_AUTHORIZED_PARTY"
    )


@pytest.mark.parametrize("value", ["abc", "-1", "61", "nan", "inf", "5s"])
def test_leeway_must_be_a_number_of_seconds_from_0_to_60(value: str) -> None:
    assert misconfigured_variable(CLERK_TOKEN_LEEWAY_SECONDS=value) == "CLERK_TOKEN_LEEWAY_SECONDS"


def test_leeway_defaults_to_5_seconds() -> None:
    assert tokens.read_settings().leeway_seconds == 5.0
    os.environ["CLERK_TOKEN_LEEWAY_SECONDS"] = "0.5"
    assert tokens.read_settings().leeway_seconds == 0.5


def test_pending_sessions_flag_is_true_or_false() -> None:
    assert tokens.read_settings().allow_pending_sessions is False
    os.environ["ALLOW_PENDING_SESSIONS"] = "TRUE"
    assert tokens.read_settings().allow_pending_sessions is True
    assert misconfigured_variable(ALLOW_PENDING_SESSIONS="yes") == "ALLOW_PENDING_SESSIONS"


def test_settings_are_read_once_per_instance() -> None:
    first = tokens.settings()
    os.environ["CLERK_AUTHORIZED_PARTIES"] = "https://other.example.com"

    assert tokens.settings() is first


# --- verification ---------------------------------------------------------------------------------


def test_valid_v2_session_without_organization_verifies() -> None:
    user_id = new_clerk_user_id()

    session = verify(session_token(user_id))

    assert session == tokens.Session(user_id=user_id, organization=None)
    assert tokens.developer_claims(session) == {}


def _tampered(user_id: str) -> str:
    header, _, signature = session_token(user_id).split(".")
    other_payload = session_token(new_clerk_user_id()).split(".")[1]
    return f"{header}.{other_payload}.{signature}"


def _too_long(user_id: str) -> str:
    return session_token(user_id, padding="x" * 9000)


REFUSALS: dict[str, tuple[Callable[[str], str], str]] = {
    "not a JWT": (lambda _: "not-a-jwt", "malformed_token"),
    "three garbage segments": (lambda _: "abc.def.ghi", "malformed_token"),
    "over 8 KiB": (_too_long, "malformed_token"),
    "alg none": (lambda user: unsigned_token(session_claims(user)), "bad_algorithm"),
    "HS256 keyed with the public key": (lambda user: hs256_with_public_key(session_claims(user)), "bad_algorithm"),
    "RS512 with the right key": (
        lambda user: jwt.encode(session_claims(user), CLERK_KEY, algorithm="RS512"),
        "bad_algorithm",
    ),
    "PS256 with the right key": (
        lambda user: jwt.encode(session_claims(user), CLERK_KEY, algorithm="PS256"),
        "bad_algorithm",
    ),
    "signed by another RSA key": (lambda user: sign(session_claims(user), OTHER_KEY), "bad_signature"),
    "payload swapped under a signature": (_tampered, "bad_signature"),
    "expired beyond the leeway": (lambda user: session_token(user, exp=int(time.time()) - 15), "expired"),
    "nbf beyond the leeway": (lambda user: session_token(user, nbf=int(time.time()) + 30), "not_yet_valid"),
    "issued in the future": (lambda user: session_token(user, iat=int(time.time()) + 30), "not_yet_valid"),
    "no exp": (lambda user: sign({k: v for k, v in session_claims(user).items() if k != "exp"}), "invalid_token"),
    "azp of another origin": (lambda user: session_token(user, azp="https://evil.example.com"), "bad_azp"),
    "azp with a trailing slash": (lambda user: session_token(user, azp=APP_ORIGIN + "/"), "bad_azp"),
    "no azp": (lambda user: session_token(user, azp=None), "missing_azp"),
    "empty azp": (lambda user: session_token(user, azp=""), "missing_azp"),
    "no sub": (lambda user: sign({k: v for k, v in session_claims(user).items() if k != "sub"}), "bad_subject"),
    "numeric sub": (lambda _: session_token("", sub=12345), "bad_subject"),
    "organization id as sub": (lambda _: session_token(new_org_id()), "bad_subject"),
    "bare user_ prefix": (lambda _: session_token("user_"), "bad_subject"),
    "sub with a slash": (lambda user: session_token(user + "/../x"), "bad_subject"),
    "sub over 128 characters": (lambda _: session_token("user_" + "a" * 124), "bad_subject"),
    "pending session": (lambda user: session_token(user, sts="pending"), "pending_session"),
    "o that is not an object": (lambda user: session_token(user, o="org_x"), "bad_organization"),
    "o without an org id": (lambda user: session_token(user, o={"rol": "admin"}), "bad_organization"),
    "org role that is a number": (
        lambda user: session_token(user, o={"id": new_org_id(), "rol": 7, "slg": "a"}),
        "bad_organization",
    ),
    "v1 org_id that is not an org id": (
        lambda user: session_token(user, **v1_organization("user_123")),
        "bad_organization",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_session_token_is_refused_with_its_reason(case: str) -> None:
    build, reason = REFUSALS[case]

    assert rejection(build(new_clerk_user_id())) == reason


def test_largest_valid_user_id_is_accepted() -> None:
    user_id = "user_" + "Z9" * 61 + "a"

    assert len(user_id) == 128
    assert verify(session_token(user_id)).user_id == user_id


def test_expiry_and_not_before_within_the_leeway_are_accepted() -> None:
    user_id = new_clerk_user_id()
    now = int(time.time())
    late = session_token(user_id, iat=now - 60, nbf=now - 70, exp=now - 2)
    early = session_token(user_id, iat=now, nbf=now + 2)

    assert verify(late).user_id == user_id
    assert verify(early).user_id == user_id
    os.environ["CLERK_TOKEN_LEEWAY_SECONDS"] = "0"
    assert rejection(late) == "expired"
    assert rejection(early) == "not_yet_valid"


def test_pending_session_is_accepted_when_configured() -> None:
    os.environ["ALLOW_PENDING_SESSIONS"] = "true"
    user_id = new_clerk_user_id()

    assert verify(session_token(user_id, sts="pending")).user_id == user_id


def test_every_authorized_party_is_accepted() -> None:
    user_id = new_clerk_user_id()

    assert verify(session_token(user_id, azp=APP_ORIGIN)).user_id == user_id
    assert verify(session_token(user_id, azp=LOCAL_ORIGIN)).user_id == user_id


# --- organizations and developer claims -----------------------------------------------------------


def test_v2_organization_claim_becomes_org_id_role_and_slug() -> None:
    org_id = new_org_id()

    session = verify(session_token(new_clerk_user_id(), **v2_organization(org_id, role="admin", slug="acme-inc")))

    assert session.organization == tokens.Organization(id=org_id, role="admin", slug="acme-inc")
    assert tokens.developer_claims(session) == {"org_id": org_id, "org_role": "admin", "org_slug": "acme-inc"}


def test_v1_organization_claims_give_the_same_form_without_the_org_prefix() -> None:
    user_id, org_id = new_clerk_user_id(), new_org_id()

    v1 = verify(session_token(user_id, **v1_organization(org_id, role="org:admin", slug="acme")))
    v2 = verify(session_token(user_id, **v2_organization(org_id, role="admin", slug="acme")))

    assert (
        tokens.developer_claims(v1)
        == tokens.developer_claims(v2)
        == {
            "org_id": org_id,
            "org_role": "admin",
            "org_slug": "acme",
        }
    )


def test_custom_role_keeps_its_key_without_the_prefix() -> None:
    org_id = new_org_id()

    session = verify(session_token(new_clerk_user_id(), **v1_organization(org_id, role="org:billing_manager")))

    assert tokens.developer_claims(session)["org_role"] == "billing_manager"


def test_organization_without_role_or_slug_carries_only_what_is_there() -> None:
    org_id = new_org_id()

    session = verify(session_token(new_clerk_user_id(), o={"id": org_id}))

    assert tokens.developer_claims(session) == {"org_id": org_id}


def test_no_claim_name_is_reserved_by_firebase() -> None:
    session = tokens.Session(new_clerk_user_id(), tokens.Organization(new_org_id(), "admin", "acme"))

    assert set(tokens.developer_claims(session)) == {"org_id", "org_role", "org_slug"}
    assert tokens.RESERVED_CLAIMS == _token_gen.RESERVED_CLAIMS  # our copy still matches the library's
    assert not set(tokens.developer_claims(session)) & _token_gen.RESERVED_CLAIMS


def test_largest_id_and_role_with_the_longest_fitting_slug_stay_within_1000_bytes() -> None:
    organization = tokens.Organization("org_" + "a" * 60, "r" * 64, "")
    without_slug = tokens.claims_size({"org_id": organization.id, "org_role": "r" * 64})
    fitting = "s" * (tokens.MAX_CLAIMS_BYTES - without_slug - len(',"org_slug":""'))
    session = tokens.Session(new_clerk_user_id(), tokens.Organization(organization.id, organization.role, fitting))

    claims = tokens.developer_claims(session)

    assert claims["org_slug"] == fitting
    assert tokens.claims_size(claims) == tokens.MAX_CLAIMS_BYTES


def test_slug_that_would_pass_1000_bytes_is_dropped_not_the_sign_in() -> None:
    org_id = new_org_id()
    token = session_token(new_clerk_user_id(), **v2_organization(org_id, slug="s" * 1000))

    claims = tokens.developer_claims(verify(token))

    assert claims == {"org_id": org_id, "org_role": "admin"}
    assert tokens.claims_size(claims) < tokens.MAX_CLAIMS_BYTES


def test_non_ascii_slug_is_counted_at_its_escaped_size() -> None:
    slug = "\U0001f600" * 100  # 400 bytes in UTF-8, 1,200 as JSON escapes
    session = tokens.Session(new_clerk_user_id(), tokens.Organization(new_org_id(), "admin", slug))

    assert len(json.dumps({"org_slug": slug}, ensure_ascii=False).encode()) < tokens.MAX_CLAIMS_BYTES
    assert "org_slug" not in tokens.developer_claims(session)


# --- minting ---------------------------------------------------------------------------------------


def _service_account_public_key(path: Path) -> Any:
    private = serialization.load_pem_private_key(json.loads(path.read_text())["private_key"].encode(), None)
    return private.public_key()


def _decode_custom_token(token: str, key_file: Path) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(
        token, _service_account_public_key(key_file), algorithms=["RS256"], audience=FIREBASE_AUDIENCE
    )
    return decoded


def test_minted_token_is_signed_by_the_service_account_for_the_clerk_user(token_service_account: Path) -> None:
    user_id, org_id = new_clerk_user_id(), new_org_id()
    session = verify(session_token(user_id, **v2_organization(org_id)))
    before = int(time.time())

    minted = tokens.mint_custom_token(session)

    assert jwt.get_unverified_header(minted)["alg"] == "RS256"
    payload = _decode_custom_token(minted, token_service_account)
    assert payload["uid"] == user_id
    assert payload["claims"] == {"org_id": org_id, "org_role": "admin", "org_slug": "acme"}
    assert payload["iss"] == payload["sub"] == SERVICE_ACCOUNT_EMAIL
    assert payload["aud"] == FIREBASE_AUDIENCE
    assert before <= payload["iat"] <= int(time.time())
    assert payload["exp"] - payload["iat"] == 3600


def test_minted_token_without_organization_has_no_claims(token_service_account: Path) -> None:
    user_id = new_clerk_user_id()

    payload = _decode_custom_token(tokens.mint_custom_token(verify(session_token(user_id))), token_service_account)

    assert payload["uid"] == user_id
    assert "claims" not in payload


def test_minted_token_does_not_verify_with_another_key(token_service_account: Path) -> None:
    minted = tokens.mint_custom_token(verify(session_token(new_clerk_user_id())))

    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(minted, new_key().public_key(), algorithms=["RS256"], audience=FIREBASE_AUDIENCE)


def test_app_is_created_once_and_reset_reads_the_key_file_again(tmp_path: Path, token_service_account: Path) -> None:
    import firebase_admin  # noqa: PLC0415
    from clerk_sessions import write_service_account  # noqa: PLC0415

    session = verify(session_token(new_clerk_user_id()))
    tokens.mint_custom_token(session)
    app = firebase_admin.get_app(tokens.APP_NAME)
    tokens.mint_custom_token(session)
    assert firebase_admin.get_app(tokens.APP_NAME) is app

    other_file = write_service_account(tmp_path, OTHER_KEY)
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(other_file)
    tokens.reset_app()
    minted = tokens.mint_custom_token(session)

    assert _decode_custom_token(minted, other_file)["uid"] == session.user_id
    with pytest.raises(jwt.InvalidSignatureError):
        _decode_custom_token(minted, token_service_account)


def test_missing_key_file_is_no_credentials(tmp_path: Path) -> None:
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "absent.json")

    with pytest.raises(tokens.MintFailed) as failed:
        tokens.mint_custom_token(verify(session_token(new_clerk_user_id())))

    assert failed.value.reason == "no_credentials"
