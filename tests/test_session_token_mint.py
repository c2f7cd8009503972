"""Minting the Firebase custom token with a service-account key file generated for the run: who signs, for
whom, with which claims, and the reuse of a token for the same session and claims.

The minted token is decoded and its signature checked with the key file's public half. Nothing is
mocked; no emulator is needed. (Signing through IAM, as on Cloud Functions: test_session_token_iam.py.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from clerk_sessions import (
    OTHER_KEY,
    SERVICE_ACCOUNT_EMAIL,
    new_clerk_user_id,
    new_key,
    new_org_id,
    new_session_id,
    session_token,
    v2_organization,
)
from cryptography.hazmat.primitives import serialization

from clerk_sync import custom_token, firebase_auth, token_settings
from clerk_sync import session_token as tokens

pytestmark = pytest.mark.usefixtures("token_environment")

FIREBASE_AUDIENCE = "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit"


def verify(token: str) -> tokens.Session:
    """Verify with the settings the environment gives (read afresh)."""
    return tokens.verify_session_token(token, token_settings.read_settings())


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

    minted = custom_token.mint(session)

    assert jwt.get_unverified_header(minted)["alg"] == "RS256"
    payload = _decode_custom_token(minted, token_service_account)
    assert payload["uid"] == user_id
    assert payload["claims"] == {
        "clerk_sid": session.session_id,
        "org_id": org_id,
        "org_role": "admin",
        "org_slug": "acme",
    }
    assert payload["iss"] == payload["sub"] == SERVICE_ACCOUNT_EMAIL
    assert payload["aud"] == FIREBASE_AUDIENCE
    assert before <= payload["iat"] <= int(time.time())
    assert payload["exp"] - payload["iat"] == 3600


def test_minted_token_without_organization_carries_only_the_session_id(token_service_account: Path) -> None:
    user_id, session_id = new_clerk_user_id(), new_session_id()

    payload = _decode_custom_token(
        custom_token.mint(verify(session_token(user_id, sid=session_id))), token_service_account
    )

    assert payload["uid"] == user_id
    assert payload["claims"] == {"clerk_sid": session_id}


def test_minted_token_does_not_verify_with_another_key(token_service_account: Path) -> None:
    minted = custom_token.mint(verify(session_token(new_clerk_user_id())))

    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(minted, new_key().public_key(), algorithms=["RS256"], audience=FIREBASE_AUDIENCE)


def test_app_is_created_once_and_reset_reads_the_key_file_again(tmp_path: Path, token_service_account: Path) -> None:
    import firebase_admin  # noqa: PLC0415
    from clerk_sessions import write_service_account  # noqa: PLC0415

    session = verify(session_token(new_clerk_user_id()))
    custom_token.mint(session)
    app = firebase_admin.get_app(firebase_auth.APP_NAME)
    custom_token.mint(session)
    assert firebase_admin.get_app(firebase_auth.APP_NAME) is app

    other_file = write_service_account(tmp_path, OTHER_KEY)
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(other_file)
    firebase_auth.reset_app()
    custom_token.forget_minted()
    minted = custom_token.mint(session)

    assert _decode_custom_token(minted, other_file)["uid"] == session.user_id
    with pytest.raises(jwt.InvalidSignatureError):
        _decode_custom_token(minted, token_service_account)


def test_missing_key_file_is_no_credentials(tmp_path: Path) -> None:
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "absent.json")

    with pytest.raises(firebase_auth.AuthFailed) as failed:
        custom_token.mint(verify(session_token(new_clerk_user_id())))

    assert failed.value.reason == "no_credentials"


def test_same_session_and_claims_get_the_same_token_within_the_reuse_window(token_service_account: Path) -> None:
    user_id, session_id, org_id = new_clerk_user_id(), new_session_id(), new_org_id()

    first = custom_token.mint(verify(session_token(user_id, sid=session_id, **v2_organization(org_id))))
    second = custom_token.mint(verify(session_token(user_id, sid=session_id, **v2_organization(org_id))))
    other_role = custom_token.mint(verify(session_token(user_id, sid=session_id, **v2_organization(org_id, "member"))))
    other_session = custom_token.mint(verify(session_token(user_id, **v2_organization(org_id))))

    assert second == first
    assert len({first, other_role, other_session}) == 3
    assert _decode_custom_token(other_role, token_service_account)["claims"]["org_role"] == "member"


def test_a_reused_token_is_minted_afresh_after_the_reuse_window(
    token_service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(custom_token, "REUSE_SECONDS", 1.0)
    session = verify(session_token(new_clerk_user_id()))
    first = custom_token.mint(session)
    time.sleep(1.1)  # past the window, and a new iat, so a new token is visibly new

    again = custom_token.mint(session)

    assert again != first
    assert (
        _decode_custom_token(again, token_service_account)["iat"]
        > _decode_custom_token(first, token_service_account)["iat"]
    )


def test_reuse_keeps_at_most_max_reused_tokens(token_service_account: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(custom_token, "MAX_REUSED", 3)
    sessions = [verify(session_token(new_clerk_user_id())) for _ in range(5)]

    for session in sessions:
        custom_token.mint(session)

    kept = [json.loads(key)[0] for key in custom_token._minted]  # the bound is the point
    assert kept == [session.user_id for session in sessions[-3:]]
