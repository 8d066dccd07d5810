"""The OpenID Connect relying party: discovery, keys with rotation, code exchange and ID-token checks.

No database and no HTTP framework here: the service calls it with a connection's settings.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import msgspec
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from kernel.errors import NotAuthenticated, Unavailable, ValidationFailed
from kernel.logging import get_logger

log = get_logger("livora.sso")

# Asymmetric algorithms only: "none" and HMAC (keyed with the client secret) are never accepted.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# Clock skew tolerated between us and the provider.
LEEWAY_SECONDS = 60
METADATA_TTL_SECONDS = 3600
JWKS_TTL_SECONDS = 3600
MAX_DOCUMENT_BYTES = 512 * 1024


class ProviderMetadata(msgspec.Struct, kw_only=True):
    """The parts of the discovery document we use (OpenID Connect Discovery 1.0, section 3)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    id_token_signing_alg_values_supported: list[str] = msgspec.field(default_factory=lambda: ["RS256"])
    code_challenge_methods_supported: list[str] | None = None
    token_endpoint_auth_methods_supported: list[str] = msgspec.field(default_factory=lambda: ["client_secret_basic"])


class TokenResponse(msgspec.Struct, kw_only=True):
    id_token: str
    access_token: str | None = None
    token_type: str | None = None


def check_url(url: str, *, allow_local: bool, what: str = "issuer") -> str:
    """Refuse URLs that would point the control plane at itself or its private network.

    NOTE: this checks the URL as written (scheme, IP literals, localhost); a public name that
    resolves to a private address is not caught here — egress filtering does that in production.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationFailed(f"The {what} must be an absolute https:// URL.", code="sso_invalid_url")
    if parts.username or parts.password or parts.fragment:
        raise ValidationFailed(f"The {what} must not carry credentials or a fragment.", code="sso_invalid_url")
    if allow_local:
        return url
    if parts.scheme != "https":
        raise ValidationFailed(f"The {what} must use https://.", code="sso_invalid_url")
    host = parts.hostname.lower()
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        raise ValidationFailed(f"The {what} must be a public host.", code="sso_invalid_url")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return url
    if not address.is_global:
        raise ValidationFailed(f"The {what} must be a public host.", code="sso_invalid_url")
    return url


def pkce_pair() -> tuple[str, str]:
    """A code verifier (RFC 7636: 43 to 128 characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to pick the key; the signature is checked by joserfc afterwards."""
    parts = token.split(".")
    if len(parts) != 3:
        raise NotAuthenticated("The ID token is not a signed JWT.", code="sso_invalid_token")
    try:
        padded = parts[0] + "=" * (-len(parts[0]) % 4)
        header = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        raise NotAuthenticated("The ID token's header cannot be read.", code="sso_invalid_token") from None
    if not isinstance(header, dict):
        raise NotAuthenticated("The ID token's header cannot be read.", code="sso_invalid_token")
    return header


@dataclass
class _Keys:
    keys: KeySet
    fetched_at: float
    # When an unknown key id last made us refetch: at most one such refetch per interval.
    forced_at: float = -1e18
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OidcClient:
    """Talks to providers. Discovery documents and key sets are cached per process.

    Keys rotate: a token signed with a key id we do not know makes us refetch the provider's
    JWKS, at most once per ``jwks_refresh_seconds`` per provider, so a flood of forged key ids
    cannot turn us into a load generator against the provider.
    """

    def __init__(
        self,
        *,
        allow_local: bool,
        jwks_refresh_seconds: float,
        timeout: float = 10.0,
        clock: Any = time.time,
    ) -> None:
        self.allow_local = allow_local
        self.jwks_refresh_seconds = jwks_refresh_seconds
        self.timeout = timeout
        self.clock = clock
        self._metadata: dict[str, tuple[ProviderMetadata, float]] = {}
        self._keys: dict[str, _Keys] = {}
        self.jwks_fetches = 0

    def _client(self) -> httpx.AsyncClient:
        # Providers answer directly; redirects are not followed so a checked URL stays the URL we call.
        return httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, headers={"Accept": "application/json"})

    async def _get_json(self, url: str, what: str) -> Any:
        check_url(url, allow_local=self.allow_local, what=what)
        try:
            async with self._client() as client:
                response = await client.get(url)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"The identity provider's {what} could not be fetched ({type(exc).__name__}).",
                code="sso_provider_unavailable",
            ) from None
        if response.status_code != 200:
            raise Unavailable(
                f"The identity provider's {what} answered HTTP {response.status_code}.", code="sso_provider_unavailable"
            )
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise Unavailable(f"The identity provider's {what} is too large.", code="sso_provider_unavailable")
        try:
            return response.json()
        except ValueError:
            raise Unavailable(f"The identity provider's {what} is not JSON.", code="sso_provider_unavailable") from None

    # --- discovery -------------------------------------------------------------------------

    async def metadata(self, issuer: str, *, refresh: bool = False) -> ProviderMetadata:
        cached = self._metadata.get(issuer)
        now = time.monotonic()
        if cached is not None and not refresh and now - cached[1] < METADATA_TTL_SECONDS:
            return cached[0]
        document = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document")
        try:
            metadata = msgspec.convert(document, ProviderMetadata)
        except msgspec.ValidationError as exc:
            raise Unavailable(
                f"The identity provider's discovery document is incomplete: {exc}.", code="sso_provider_unavailable"
            ) from None
        # OpenID Connect Discovery 1.0, section 4.3: the issuer must be exactly the one we asked.
        if metadata.issuer != issuer:
            raise Unavailable(
                f"The discovery document names issuer {metadata.issuer!r}, not {issuer!r}.",
                code="sso_issuer_mismatch",
            )
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            check_url(getattr(metadata, name), allow_local=self.allow_local, what=name)
        if metadata.code_challenge_methods_supported is not None and (
            "S256" not in metadata.code_challenge_methods_supported
        ):
            raise Unavailable("The identity provider does not support PKCE with S256.", code="sso_pkce_unsupported")
        if not set(metadata.id_token_signing_alg_values_supported) & set(SIGNING_ALGORITHMS):
            raise Unavailable(
                "The identity provider signs ID tokens with no algorithm we accept "
                f"({', '.join(metadata.id_token_signing_alg_values_supported)}).",
                code="sso_algorithm_unsupported",
            )
        self._metadata[issuer] = (metadata, now)
        return metadata

    # --- keys ------------------------------------------------------------------------------

    async def _fetch_keys(self, jwks_uri: str) -> KeySet:
        document = await self._get_json(jwks_uri, "key set (JWKS)")
        self.jwks_fetches += 1
        try:
            # Signing keys only: never a private key published by mistake, nor an encryption key.
            public = {
                "keys": [
                    k for k in document["keys"] if isinstance(k, dict) and "d" not in k and k.get("use", "sig") == "sig"
                ]
            }
            return KeySet.import_key_set(public)  # type: ignore[arg-type]
        except (KeyError, TypeError, JoseError, ValueError):
            raise Unavailable(
                "The identity provider's key set (JWKS) has no usable key.", code="sso_provider_unavailable"
            ) from None

    async def keys(self, jwks_uri: str, *, refresh: bool = False) -> KeySet:
        entry = self._keys.get(jwks_uri)
        now = time.monotonic()
        if entry is None or refresh or now - entry.fetched_at >= JWKS_TTL_SECONDS:
            fetched = await self._fetch_keys(jwks_uri)
            if entry is None:
                entry = self._keys[jwks_uri] = _Keys(keys=fetched, fetched_at=now)
            else:
                entry.keys, entry.fetched_at = fetched, now
        return entry.keys

    async def _key_for(self, jwks_uri: str, kid: str | None) -> Any:
        keys = await self.keys(jwks_uri)
        try:
            return keys.get_by_kid(kid)
        except InvalidKeyIdError:
            pass
        entry = self._keys[jwks_uri]
        async with entry.lock:
            try:  # another request may have refetched while we waited
                return entry.keys.get_by_kid(kid)
            except InvalidKeyIdError:
                pass
            now = time.monotonic()
            if now - entry.forced_at >= self.jwks_refresh_seconds:
                entry.forced_at = now
                log.info("sso_jwks_refetch", jwks_uri=jwks_uri, kid=kid)
                await self.keys(jwks_uri, refresh=True)
                try:
                    return entry.keys.get_by_kid(kid)
                except InvalidKeyIdError:
                    pass
        raise NotAuthenticated(
            "The ID token is signed with a key the identity provider does not publish.",
            code="sso_unknown_signing_key",
        )

    # --- the authorization code flow --------------------------------------------------------

    @staticmethod
    def authorization_url(
        metadata: ProviderMetadata,
        *,
        client_id: str,
        redirect_uri: str,
        scopes: list[str],
        state: str,
        nonce: str,
        code_challenge: str,
        login_hint: str | None = None,
    ) -> str:
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        separator = "&" if "?" in metadata.authorization_endpoint else "?"
        return f"{metadata.authorization_endpoint}{separator}{urlencode(params)}"

    async def exchange_code(
        self,
        metadata: ProviderMetadata,
        *,
        client_id: str,
        client_secret: str,
        code: str,
        redirect_uri: str,
        code_verifier: str,
    ) -> TokenResponse:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        auth: httpx.Auth | None = None
        methods = metadata.token_endpoint_auth_methods_supported
        if "client_secret_basic" in methods or "client_secret_post" not in methods:
            # RFC 6749, section 2.3.1: the credentials are form-encoded before Basic encoding.
            auth = httpx.BasicAuth(quote(client_id, safe=""), quote(client_secret, safe=""))
        else:
            form |= {"client_id": client_id, "client_secret": client_secret}
        check_url(metadata.token_endpoint, allow_local=self.allow_local, what="token_endpoint")
        try:
            async with self._client() as client:
                response = await client.post(metadata.token_endpoint, data=form, auth=auth)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"The identity provider's token endpoint could not be reached ({type(exc).__name__}).",
                code="sso_provider_unavailable",
            ) from None
        if response.status_code >= 500:
            raise Unavailable(
                f"The identity provider's token endpoint answered HTTP {response.status_code}.",
                code="sso_provider_unavailable",
            )
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200:
            error = body.get("error") if isinstance(body, dict) else None
            # invalid_grant: the code was used already, expired, or the PKCE verifier does not match.
            raise NotAuthenticated(
                f"The identity provider refused the sign-in code ({error or response.status_code}).",
                code="sso_code_rejected",
            )
        try:
            return msgspec.convert(body, TokenResponse)
        except msgspec.ValidationError:
            raise NotAuthenticated(
                "The identity provider's token response has no ID token.", code="sso_invalid_token"
            ) from None

    async def verify_id_token(
        self, token: str, metadata: ProviderMetadata, *, client_id: str, nonce: str, max_age_seconds: float
    ) -> dict[str, Any]:
        """Check the signature against the provider's keys, then the claims (OIDC Core 3.1.3.7)."""
        header = _unverified_header(token)
        allowed = [a for a in metadata.id_token_signing_alg_values_supported if a in SIGNING_ALGORITHMS]
        algorithm = header.get("alg")
        if algorithm not in allowed:
            raise NotAuthenticated(
                f"The ID token's algorithm {algorithm!r} is not accepted.", code="sso_invalid_signature"
            )
        kid = header.get("kid")
        key = await self._key_for(metadata.jwks_uri, kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm]).claims
        except BadSignatureError:
            raise NotAuthenticated("The ID token's signature is not valid.", code="sso_invalid_signature") from None
        except (JoseError, ValueError):
            raise NotAuthenticated("The ID token cannot be read.", code="sso_invalid_token") from None
        return check_claims(
            claims,
            issuer=metadata.issuer,
            client_id=client_id,
            nonce=nonce,
            now=float(self.clock()),
            max_age_seconds=max_age_seconds,
        )


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NotAuthenticated(f"The ID token has no valid `{name}` claim.", code="sso_invalid_token")
    return float(value)


def check_claims(
    claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str, now: float, max_age_seconds: float
) -> dict[str, Any]:
    """The ID-token claim checks, each failure with its own stable code."""
    if claims.get("iss") != issuer:
        raise NotAuthenticated("The ID token was issued by another issuer.", code="sso_wrong_issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences:
        raise NotAuthenticated("The ID token is meant for another client.", code="sso_wrong_audience")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise NotAuthenticated("The ID token was issued to another party (azp).", code="sso_wrong_audience")
    expires = _number(claims, "exp")
    if expires <= now - LEEWAY_SECONDS:
        raise NotAuthenticated("The ID token has expired.", code="sso_token_expired")
    issued = _number(claims, "iat")
    if issued > now + LEEWAY_SECONDS:
        raise NotAuthenticated("The ID token was issued in the future.", code="sso_invalid_token")
    if issued < now - max_age_seconds - LEEWAY_SECONDS:
        raise NotAuthenticated("The ID token was issued too long ago.", code="sso_token_expired")
    if "nbf" in claims and _number(claims, "nbf") > now + LEEWAY_SECONDS:
        raise NotAuthenticated("The ID token is not valid yet.", code="sso_invalid_token")
    given = claims.get("nonce")
    if not isinstance(given, str) or not secrets.compare_digest(given.encode(), nonce.encode()):
        raise NotAuthenticated("The ID token's nonce does not match this sign-in.", code="sso_nonce_mismatch")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= 255:
        raise NotAuthenticated("The ID token has no valid subject (`sub`).", code="sso_invalid_token")
    return claims
