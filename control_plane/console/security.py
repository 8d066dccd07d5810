"""The console's browser defences: CSRF tokens bound to the session, a strict CSP, the cookies it sets."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie

from control_plane.http import MUTATING, SESSION_COOKIE
from control_plane.settings import Settings
from kernel.errors import PermissionDenied

CSRF_COOKIE = "livora_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "_csrf"
THEME_COOKIE = "livora_theme"

# No inline script or style, no eval: htmx runs with allowEval off (see base.html's htmx-config).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _csrf_secret(request: Request[Any, Any, Any]) -> str | None:
    """What the token is derived from: the session cookie, or before sign-in the browser's own CSRF cookie."""
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(CSRF_COOKIE)


def csrf_token(secret: str) -> str:
    # Only a page of this site can read the token; the secret behind it never leaves the HttpOnly cookie.
    return hmac.new(secret.encode(), b"livora-console-csrf", hashlib.sha256).hexdigest()


def page_csrf(request: Request[Any, Any, Any]) -> tuple[str, Cookie | None]:
    """The token to embed in a page, and the CSRF cookie to set when the browser has neither cookie yet."""
    secret = _csrf_secret(request)
    if secret:
        return csrf_token(secret), None
    fresh = secrets.token_urlsafe(32)
    return csrf_token(fresh), browser_cookie(request.app.state.runtime.settings, CSRF_COOKIE, fresh)


async def check_csrf(request: Request[Any, Any, Any]) -> None:
    """Refuse an unsafe console request whose token (form field or htmx header) does not match its cookie."""
    if request.method not in MUTATING:
        return
    given = request.headers.get(CSRF_HEADER)
    if not given:
        form = await request.form()
        given = form.get(CSRF_FIELD)
    secret = _csrf_secret(request)
    if not (secret and isinstance(given, str) and hmac.compare_digest(given, csrf_token(secret))):
        raise PermissionDenied(
            "This form has expired or did not come from this site. Reload the page and try again.",
            code="csrf_failed",
        )


def browser_cookie(settings: Settings, key: str, value: str, max_age: int | None = None) -> Cookie:
    """HttpOnly, SameSite=Lax, Secure (browsers still keep it on http://localhost and 127.0.0.1)."""
    return Cookie(
        key=key, value=value, httponly=True, secure=settings.cookie_secure, samesite="lax", path="/", max_age=max_age
    )


def session_cookie(settings: Settings, token: str, max_age: int) -> Cookie:
    return browser_cookie(settings, SESSION_COOKIE, token, max_age)


def cleared_session_cookie(settings: Settings) -> Cookie:
    return browser_cookie(settings, SESSION_COOKIE, "", 0)
