"""The test OpenID provider (tests/oidc/provider.mjs) for the end-to-end tests.

Starts panva's oidc-provider under node on 127.0.0.1 with keys from
tests/oidc/keygen.mjs, gets tokens through the real authorization-code + PKCE flow
(the provider's `test-cli` client, driven over HTTP), and mints tokens the provider
would never issue (expired ones) with the same key, using `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

REPO = Path(__file__).resolve().parents[2]
OIDC_DIR = REPO / "tests" / "oidc"
TEST_CLI_REDIRECT = "http://127.0.0.1:9/test-cli/callback"
IDP_PASSWORD = "test-password"
MFA_ACR = "https://refeds.org/profile/mfa"
SFA_ACR = "https://refeds.org/profile/sfa"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_claims(token: str) -> dict:
    p = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def _require_node_modules():
    if not (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        pytest.fail(
            f"{OIDC_DIR}/node_modules missing: run scripts/setup.sh "
            "(installs oidc-provider for the test OpenID provider)"
        )


def generate_key(kid: str, alg: str = "RS256") -> dict:
    """A key from keygen.mjs: private_jwk, public_jwk, private_der (base64), ..."""
    out = subprocess.run(
        ["node", str(OIDC_DIR / "keygen.mjs"), f"{kid}:{alg}"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return json.loads(out.stdout)[0]


class OidcProvider:
    """node provider.mjs on 127.0.0.1:<random>; stopped by stop()."""

    def __init__(
        self,
        workdir: Path,
        key: dict,
        access_token_ttl: int = 900,
        redirect_uris: list[str] | None = None,
        step_up_mfa: bool = False,
        logout_origin: str | None = None,
    ):
        """`redirect_uris`: registered for the `hubgate` client (hubgate's browser login);
        `step_up_mfa`: MFA claims only when the request asks (provider.mjs, "step-up").
        `logout_origin`: hubgate's public origin, registered for RP-initiated and
        back-channel logout (provider.mjs `--logout-origin`)."""
        _require_node_modules()
        self.key = key
        self.jwks_file = workdir / "idp-jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [key["private_jwk"]]}))
        self.log_path = workdir / "idp.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                "node",
                str(OIDC_DIR / "provider.mjs"),
                "--jwks", str(self.jwks_file),
                "--at-ttl", str(access_token_ttl),
                *[a for u in redirect_uris or [] for a in ("--redirect-uri", u)],
                *(["--step-up-mfa"] if step_up_mfa else []),
                *(["--logout-origin", logout_origin] if logout_origin else []),
            ],  # fmt: skip
            cwd=OIDC_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self.issuer = self._wait_listening(20)
        # Keep draining stdout into the log.
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_listening(self, timeout: float) -> str:
        result: list[str] = []

        def read():
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                self._log.write((line + "\n").encode())
                if line.startswith("listening "):
                    result.append(line.split(" ", 1)[1])
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not result:
            self.stop()
            raise AssertionError(
                f"test OpenID provider did not start: {self.log_path.read_text(errors='replace')}"
            )
        return result[0]

    def _drain(self):
        try:
            for raw in self.proc.stdout:
                self._log.write(raw)
        except (ValueError, OSError):
            pass

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self._log.close()

    # -- tokens ---------------------------------------------------------------
    def login(self, user: str, amr: str | None = None, acr: str | None = None) -> dict:
        """Authorization code + PKCE as the `test-cli` client; the token response."""
        s = requests.Session()
        verifier = b64url(secrets.token_bytes(32))
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        r = s.get(
            f"{self.issuer}/auth",
            params={
                "client_id": "test-cli",
                "response_type": "code",
                "scope": "openid email profile hub",
                "redirect_uri": TEST_CLI_REDIRECT,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
            allow_redirects=False,
            timeout=10,
        )
        url = r.url
        for _ in range(10):
            assert r.status_code in (302, 303), f"IdP: {r.status_code} {r.text[:300]}"
            url = urljoin(url, r.headers["Location"])
            if url.startswith(TEST_CLI_REDIRECT):
                break
            if "/interaction/" in url:
                assert s.get(url, timeout=10).status_code == 200
                uid = url.rstrip("/").rsplit("/", 1)[1]
                form = {"login": user, "password": IDP_PASSWORD, "otp": "123456"}
                if amr:
                    form["amr"] = amr
                if acr:
                    form["acr"] = acr
                r = s.post(
                    f"{self.issuer}/interaction/{uid}/login",
                    data=form,
                    allow_redirects=False,
                    timeout=10,
                )
            else:
                r = s.get(url, allow_redirects=False, timeout=10)
        q = parse_qs(urlparse(url).query)
        assert q.get("state") == [state] and q.get("iss") == [self.issuer], url
        r = s.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": q["code"][0],
                "redirect_uri": TEST_CLI_REDIRECT,
                "code_verifier": verifier,
                "client_id": "test-cli",
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def access_token(self, user: str, **kw) -> str:
        return self.login(user, **kw)["access_token"]

    def mint(self, claims: dict) -> str:
        """An RS256 token signed with the provider's own key (for cases it won't issue)."""
        key = serialization.load_der_private_key(
            base64.b64decode(self.key["private_der"]), password=None
        )
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.key["kid"]}
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        )
        sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(sig)

    def claims(self, user: str, **overrides) -> dict:
        now = int(time.time())
        c = {
            "iss": self.issuer,
            "aud": "jupyterhub",
            "sub": user,
            "preferred_username": user,
            "email": f"{user}@example.org",
            "groups": [],
            "iat": now - 5,
            "exp": now + 600,
            "auth_time": now - 60,
            "acr": MFA_ACR,
            "amr": ["pwd", "otp"],
        }
        c.update(overrides)
        return c


def hubgate_auth_toml(
    public_url: str,
    issuer: str,
    audit: str = "all",
    client_id: str | None = None,
    extra: str = "",
) -> str:
    """The [auth] section for a hubgate in front of JupyterHub (hub-managed); with
    `client_id`, hubgate's browser login through the provider is on; `extra` is appended
    (e.g. [[auth.policies]] tables)."""
    return (
        "[auth]\n"
        f'public-url = "{public_url}"\n'
        'base-url = "/"\n'
        f'audit-log = "{audit}"\n'
        "\n[[auth.issuers]]\n"
        f'issuer = "{issuer}"\n'
        'audiences = ["jupyterhub"]\n'
        "discovery = true\n"
        'algorithms = ["RS256", "ES256", "EdDSA"]\n'
        "leeway-seconds = 30\n"
        'username-claim = "preferred_username"\n'
        'admin-groups = ["hub-admins"]\n'
        "require-mfa = true\n"
        'mfa-acr = ["https://refeds.org/profile/mfa"]\n'
        'mfa-amr = ["mfa", "otp", "hwk"]\n'
        + (f'client-id = "{client_id}"\n' if client_id else "")
        + extra
    )


class AuthSetup:
    """What a Deployment needs to run hubgate with [auth]: the issuer and a Bearer
    token for the harness's own readiness probes."""

    def __init__(
        self,
        issuer: str,
        bearer: str,
        audit: str = "all",
        client_id: str | None = None,
        extra: str = "",
    ):
        self.issuer = issuer
        self.bearer = bearer
        self.audit = audit
        self.client_id = client_id
        self.extra = extra

    def toml(self, public_url: str) -> str:
        return hubgate_auth_toml(public_url, self.issuer, self.audit, self.client_id, self.extra)
