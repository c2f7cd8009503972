"""A stand-in for what signs custom tokens on Cloud Functions: the metadata server and IAM signBlob.

On Cloud Functions firebase-admin has no private key: google-auth finds the runtime service account
through the metadata server, takes an access token from it, and every custom token is signed by
`POST https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/EMAIL:signBlob`. This
module serves both on loopback, so the exchange runs that exact path with real firebase-admin,
google-auth and requests: one server is the metadata server (reached through GCE_METADATA_HOST and
as the HTTP proxy for `metadata.google.internal`) and the HTTPS proxy, which answers a CONNECT to
iamcredentials.googleapis.com with TLS under a certificate from a CA made for the run
(REQUESTS_CA_BUNDLE). It signs with a key of its own, counts calls, and can answer 429, 503, 403
or hang, as IAM does when quota, Google or a missing role get in the way.
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from clerk_sessions import new_key
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from loopback import serving

IAM_HOST = "iamcredentials.googleapis.com"
SERVICE_ACCOUNT = "clerk-firebase-token@demo-clerk-sync-test.iam.gserviceaccount.com"
ACCESS_TOKEN = "ya29.stand-in-access-token"
HANG_SECONDS = 20.0


@dataclass
class Google:
    """The stand-in's state: how IAM answers next, and what it was asked."""

    url: str = ""
    ca_file: Path = Path()
    signing_key: rsa.RSAPrivateKey = field(default_factory=new_key)
    mode: str = "ok"  # ok | 429 | 503 | 403 | hang
    sign_calls: int = 0
    token_calls: int = 0

    def environment(self, config_dir: Path) -> dict[str, str]:
        """What a Cloud Functions instance has, pointed here (no key file, no gcloud login)."""
        host = self.url.removeprefix("http://")
        return {
            "GCE_METADATA_HOST": host,
            "GCE_METADATA_IP": host,
            "HTTP_PROXY": self.url,
            "HTTPS_PROXY": self.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
            "CLOUDSDK_CONFIG": str(config_dir),
        }


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA for the run, and a certificate for IAM_HOST signed by it: (ca, certificate, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = new_key(), new_key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("clerk-sync test CA"))
        .issuer_name(_name("clerk-sync test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(IAM_HOST))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(IAM_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "iam.pem", directory / "iam-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _handler(state: Google, tls: ssl.SSLContext) -> type[BaseHTTPRequestHandler]:
    """The metadata server, the proxy, and (inside the proxied TLS) IAM."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Metadata-Flavor", "Google")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            """The metadata server, asked directly or through the proxy (absolute URL)."""
            path = urllib.parse.urlsplit(self.path).path
            account = "/computeMetadata/v1/instance/service-accounts/default/"
            if path in {"", "/"}:
                self._answer(200, b"", "application/text")
            elif path == account + "email":
                self._answer(200, SERVICE_ACCOUNT.encode(), "application/text")
            elif path == account + "token":
                state.token_calls += 1
                self._answer(200, {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"})
            elif path == account:
                self._answer(200, {"email": SERVICE_ACCOUNT, "aliases": ["default"], "scopes": ["cloud-platform"]})
            elif path == "/computeMetadata/v1/project/project-id":
                self._answer(200, b"demo-clerk-sync-test", "application/text")
            else:
                self._answer(404, {"error": "not found"})

        def do_CONNECT(self) -> None:
            """The HTTPS proxy: only IAM, answered here under the run's certificate."""
            if self.path != f"{IAM_HOST}:443":
                self.send_response(403)
                self.end_headers()
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            try:
                wrapped = tls.wrap_socket(self.connection, server_side=True)
            except (ssl.SSLError, OSError):
                self.close_connection = True
                return
            iam(wrapped, self.client_address, self.server)
            self.close_connection = True

        def do_POST(self) -> None:
            """IAM signBlob (only reached through the TLS tunnel)."""
            if not self.path.startswith(f"/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:signBlob"):
                self._answer(404, {"error": {"code": 404, "status": "NOT_FOUND"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            state.sign_calls += 1
            if self.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
                self._answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
            elif state.mode == "hang":
                time.sleep(HANG_SECONDS)
            elif state.mode in {"429", "503", "403"}:
                status = {"429": "RESOURCE_EXHAUSTED", "503": "UNAVAILABLE", "403": "PERMISSION_DENIED"}[state.mode]
                code = int(state.mode)
                self._answer(code, {"error": {"code": code, "message": "stand-in", "status": status}})
            else:
                signature = state.signing_key.sign(
                    base64.b64decode(body["payload"]), padding.PKCS1v15(), hashes.SHA256()
                )
                self._answer(200, {"keyId": "stand-in", "signedBlob": base64.b64encode(signature).decode()})

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test output is for the tests."""

    class Iam(Handler):
        """The same handler on the TLS socket of a tunnel."""

    def iam(connection: Any, address: Any, server: Any) -> None:
        with suppress(ssl.SSLError, OSError):
            Iam(connection, address, server)

    return Handler


@contextmanager
def serving_google(directory: Path) -> Iterator[Google]:
    """The stand-in on a free loopback port until the block ends."""
    state = Google()
    ca_file, certificate, key = _certificates(directory)
    state.ca_file = ca_file
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate, key)
    with serving(_handler(state, tls)) as url:
        state.url = url
        yield state


def public_key(state: Google) -> rsa.RSAPublicKey:
    """What verifies the tokens the stand-in signed."""
    return state.signing_key.public_key()
