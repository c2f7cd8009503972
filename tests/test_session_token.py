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

import jwt
import pytest
from clerk_sessions import (
    APP_ORIGIN,
    CLERK_KEY,
    CLERK_PUBLIC_PEM,
    ISSUER,
    LOCAL_ORIGIN,
    OTHER_KEY,
    hs256_with_public_key,
    new_clerk_user_id,
    new_org_id,
    new_session_id,
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

from clerk_sync import custom_token, token_settings
from clerk_sync import session_token as tokens

pytestmark = pytest.mark.usefixtures("token_environment")

FIREBASE_AUDIENCE = "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit"


def verify(token: str) -> tokens.Session:
    """Verify with the settings the environment gives (read afresh)."""
    return tokens.verify_session_token(token, token_settings.read_settings())


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
    with pytest.raises(token_settings.Misconfigured) as problem:
        token_settings.read_settings()
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

    assert token_settings.read_settings().authorized_parties == {APP_ORIGIN, LOCAL_ORIGIN, "http://127.0.0.1:5173"}


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
    assert token_settings.read_settings().leeway_seconds == 5.0
    os.environ["CLERK_TOKEN_LEEWAY_SECONDS"] = "0.5"
    assert token_settings.read_settings().leeway_seconds == 0.5


def test_pending_sessions_flag_is_true_or_false() -> None:
    assert token_settings.read_settings().allow_pending_sessions is False
    os.environ["ALLOW_PENDING_SESSIONS"] = "TRUE"
    assert token_settings.read_settings().allow_pending_sessions is True
    assert misconfigured_variable(ALLOW_PENDING_SESSIONS="yes") == "ALLOW_PENDING_SESSIONS"


def test_settings_are_read_once_per_instance() -> None:
    first = token_settings.settings()
    os.environ["CLERK_AUTHORIZED_PARTIES"] = "https://other.example.com"

    assert token_settings.settings() is first


# --- verification ---------------------------------------------------------------------------------


def test_valid_v2_session_without_organization_verifies() -> None:
    user_id, session_id = new_clerk_user_id(), new_session_id()

    session = verify(session_token(user_id, sid=session_id))

    assert session == tokens.Session(user_id=user_id, session_id=session_id, organization=None)
    assert custom_token.developer_claims(session) == {"clerk_sid": session_id}


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
    "JWT template token (no sid, an hour)": (lambda user: sign(template_claims(user, 3600)), "not_a_session_token"),
    "JWT template token (no sid, 60 s)": (lambda user: sign(template_claims(user, 60)), "not_a_session_token"),
    "sid that is not a session id": (lambda user: session_token(user, sid="user_abc"), "not_a_session_token"),
    "numeric sid": (lambda user: session_token(user, sid=12345), "not_a_session_token"),
    "empty sid": (lambda user: session_token(user, sid=""), "not_a_session_token"),
    "sid with a slash": (lambda user: session_token(user, sid="sess_abc/../x"), "not_a_session_token"),
    "lifetime of an hour": (lambda user: session_token(user, lifetime=3600), "lifetime_too_long"),
    "lifetime just over the limit": (
        lambda user: session_token(user, lifetime=tokens.MAX_LIFETIME_SECONDS + 1),
        "lifetime_too_long",
    ),
    "iat as text": (lambda user: session_token(user, iat=f"{int(time.time())}"), "invalid_token"),
    "version 3": (lambda user: session_token(user, v=3), "unsupported_version"),
    "version as text": (lambda user: session_token(user, v="2"), "unsupported_version"),
    "version true": (lambda user: session_token(user, v=True), "unsupported_version"),
}


def template_claims(user_id: str, lifetime: int) -> dict[str, object]:
    """What a JWT template's token holds: the default claims and the template's own, no sid, no v."""
    now = int(time.time())
    return {
        "azp": APP_ORIGIN,
        "exp": now + lifetime,
        "iat": now,
        "iss": ISSUER,
        "jti": "template-jti",
        "nbf": now - 10,
        "sub": user_id,
        "email": "someone@example.com",
    }


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_session_token_is_refused_with_its_reason(case: str) -> None:
    build, reason = REFUSALS[case]

    assert rejection(build(new_clerk_user_id())) == reason


def test_lifetime_up_to_the_limit_is_accepted() -> None:
    user_id = new_clerk_user_id()

    assert verify(session_token(user_id, lifetime=tokens.MAX_LIFETIME_SECONDS)).user_id == user_id


def test_v1_session_without_v_and_with_v_1_are_read_as_v1() -> None:
    org_id = new_org_id()

    without_v = verify(session_token(new_clerk_user_id(), **v1_organization(org_id)))
    with_v_1 = verify(session_token(new_clerk_user_id(), **{**v1_organization(org_id), "v": 1}))

    assert without_v.organization == with_v_1.organization == tokens.Organization(org_id, "admin", "acme")


def test_v2_session_reads_o_only_and_ignores_v1_organization_claims() -> None:
    org_id, v1_org = new_org_id(), new_org_id()
    v1_claims = {"org_id": v1_org, "org_role": "org:admin", "org_slug": "v1"}

    only_v1 = verify(session_token(new_clerk_user_id(), **v1_claims))
    both = verify(session_token(new_clerk_user_id(), **v2_organization(org_id, role="member"), **v1_claims))

    assert only_v1.organization is None
    assert both.organization == tokens.Organization(org_id, "member", "acme")


def test_v1_session_reads_v1_claims_only_and_ignores_o() -> None:
    org_id, v2_org = new_org_id(), new_org_id()

    only_o = verify(session_token(new_clerk_user_id(), v=None, fva=None, **v2_organization(v2_org)))
    both = verify(session_token(new_clerk_user_id(), **v1_organization(org_id), **v2_organization(v2_org)))

    assert only_o.organization is None
    assert both.organization == tokens.Organization(org_id, "admin", "acme")


def test_missing_azp_is_accepted_only_with_the_opt_in_and_a_present_azp_is_still_checked() -> None:
    user_id = new_clerk_user_id()
    assert rejection(session_token(user_id, azp=None)) == "missing_azp"

    os.environ["ALLOW_MISSING_AZP"] = "true"

    assert verify(session_token(user_id, azp=None)).user_id == user_id
    assert rejection(session_token(user_id, azp="https://evil.example.com")) == "bad_azp"
    assert verify(session_token(user_id, azp=APP_ORIGIN)).user_id == user_id
    assert misconfigured_variable(ALLOW_MISSING_AZP="yes") == "ALLOW_MISSING_AZP"


def test_issuer_is_checked_only_when_clerk_issuer_is_set() -> None:
    user_id = new_clerk_user_id()
    other = session_token(user_id, iss="https://clerk.other.example.com")
    assert verify(other).user_id == user_id

    os.environ["CLERK_ISSUER"] = ISSUER

    assert verify(session_token(user_id)).user_id == user_id
    assert rejection(other) == "bad_issuer"
    assert rejection(session_token(user_id, iss=ISSUER + "/")) == "bad_issuer"
    assert rejection(sign({k: v for k, v in session_claims(user_id).items() if k != "iss"})) == "bad_issuer"


@pytest.mark.parametrize(
    "issuer", ["clerk.example.com", "http://clerk.example.com", "https://clerk.example.com/", "https://*.clerk.dev"]
)
def test_clerk_issuer_must_be_an_https_origin(issuer: str) -> None:
    assert misconfigured_variable(CLERK_ISSUER=issuer) == "CLERK_ISSUER"


def test_auth_emulator_without_a_project_names_google_cloud_project() -> None:
    os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = "127.0.0.1:9099"

    assert misconfigured_variable(GOOGLE_CLOUD_PROJECT=None) == "GOOGLE_CLOUD_PROJECT"
    assert misconfigured_variable(GOOGLE_CLOUD_PROJECT="demo-x", K_SERVICE="clerk-firebase-token") == (
        "FIREBASE_AUTH_EMULATOR_HOST"
    )
    assert misconfigured_variable(K_SERVICE=None, FIREBASE_AUTH_EMULATOR_HOST="9099") == "FIREBASE_AUTH_EMULATOR_HOST"


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
    assert custom_token.developer_claims(session) == {
        "clerk_sid": session.session_id,
        "org_id": org_id,
        "org_role": "admin",
        "org_slug": "acme-inc",
    }


def test_v2_billing_claims_ride_along_as_hints_and_odd_ones_are_dropped_not_refused() -> None:
    user_id, org_id = new_clerk_user_id(), new_org_id()

    with_billing = verify(
        session_token(user_id, pla="u:free,o:pro", fea="o:dashboard,o:reports", **v2_organization(org_id))
    )
    odd = verify(session_token(user_id, pla="u:free pro", fea=["o:dashboard"]))
    v1 = verify(session_token(user_id, pla="u:free", **v1_organization(org_id)))

    claims = custom_token.developer_claims(with_billing)
    assert (claims["clerk_pla"], claims["clerk_fea"]) == ("u:free,o:pro", "o:dashboard,o:reports")
    assert "clerk_pla" not in custom_token.developer_claims(odd)
    assert "clerk_fea" not in custom_token.developer_claims(odd)
    assert "clerk_pla" not in custom_token.developer_claims(v1)  # a v1 token has no billing claims


def test_billing_hints_that_would_pass_1000_bytes_are_left_out_and_the_organization_kept() -> None:
    long_features = ",".join(f"o:feature_{index:03d}" for index in range(40))  # 600 bytes
    session = verify(
        session_token(new_clerk_user_id(), pla="o:" + "p" * 400, fea=long_features, **v2_organization(new_org_id()))
    )

    claims = custom_token.developer_claims(session)

    assert custom_token.claims_size(claims) <= custom_token.MAX_CLAIMS_BYTES
    assert {"clerk_sid", "org_id", "org_role", "org_slug", "clerk_pla"} <= set(claims)
    assert "clerk_fea" not in claims  # the one that no longer fits


def test_v1_organization_claims_give_the_same_form_without_the_org_prefix() -> None:
    user_id, org_id = new_clerk_user_id(), new_org_id()

    session_id = new_session_id()
    v1 = verify(session_token(user_id, sid=session_id, **v1_organization(org_id, role="org:admin", slug="acme")))
    v2 = verify(session_token(user_id, sid=session_id, **v2_organization(org_id, role="admin", slug="acme")))

    expected = {"clerk_sid": session_id, "org_id": org_id, "org_role": "admin", "org_slug": "acme"}
    assert custom_token.developer_claims(v1) == custom_token.developer_claims(v2) == expected


def test_custom_role_keeps_its_key_without_the_prefix() -> None:
    org_id = new_org_id()

    session = verify(session_token(new_clerk_user_id(), **v1_organization(org_id, role="org:billing_manager")))

    assert custom_token.developer_claims(session)["org_role"] == "billing_manager"


def test_organization_without_role_or_slug_carries_only_what_is_there() -> None:
    org_id = new_org_id()

    session = verify(session_token(new_clerk_user_id(), o={"id": org_id}))

    assert custom_token.developer_claims(session) == {"clerk_sid": session.session_id, "org_id": org_id}


def test_no_claim_name_is_reserved_by_firebase() -> None:
    session = tokens.Session(new_clerk_user_id(), new_session_id(), tokens.Organization(new_org_id(), "admin", "acme"))

    assert set(custom_token.developer_claims(session)) == {"clerk_sid", "org_id", "org_role", "org_slug"}
    assert custom_token.RESERVED_CLAIMS == _token_gen.RESERVED_CLAIMS  # our copy still matches the library's
    assert not set(custom_token.developer_claims(session)) & _token_gen.RESERVED_CLAIMS


def test_largest_ids_and_role_with_the_longest_fitting_slug_stay_within_1000_bytes() -> None:
    session_id, org_id, role = "sess_" + "b" * 64, "org_" + "a" * 60, "r" * 64
    without_slug = custom_token.claims_size({"clerk_sid": session_id, "org_id": org_id, "org_role": role})
    fitting = "s" * (custom_token.MAX_CLAIMS_BYTES - without_slug - len(',"org_slug":""'))
    session = tokens.Session(new_clerk_user_id(), session_id, tokens.Organization(org_id, role, fitting))

    claims = custom_token.developer_claims(session)

    assert claims["org_slug"] == fitting
    assert custom_token.claims_size(claims) == custom_token.MAX_CLAIMS_BYTES


def test_slug_that_would_pass_1000_bytes_is_dropped_not_the_sign_in() -> None:
    org_id = new_org_id()
    token = session_token(new_clerk_user_id(), **v2_organization(org_id, slug="s" * 1000))

    session = verify(token)
    claims = custom_token.developer_claims(session)

    assert claims == {"clerk_sid": session.session_id, "org_id": org_id, "org_role": "admin"}
    assert custom_token.claims_size(claims) < custom_token.MAX_CLAIMS_BYTES


def test_non_ascii_slug_is_counted_at_its_escaped_size() -> None:
    slug = "\U0001f600" * 100  # 400 bytes in UTF-8, 1,200 as JSON escapes
    session = tokens.Session(new_clerk_user_id(), new_session_id(), tokens.Organization(new_org_id(), "admin", slug))

    assert len(json.dumps({"org_slug": slug}, ensure_ascii=False).encode()) < custom_token.MAX_CLAIMS_BYTES
    assert "org_slug" not in custom_token.developer_claims(session)
