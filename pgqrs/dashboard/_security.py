"""What keeps the dashboard safe: CSRF tokens, optional authentication, response headers.

- **CSRF**: signed double submit. A random value lives in an HttpOnly, SameSite=Strict
  cookie scoped to the dashboard's path; every form carries ``HMAC(secret, value)``. A
  POST is accepted only if the two agree and the browser does not say it is cross-site
  (``Sec-Fetch-Site``, or an ``Origin`` naming another host). Another site can neither
  read the cookie nor forge the signature.
- **Authentication** (optional, for the standalone server; a host app usually brings its
  own): a bearer token (``Authorization: Bearer``, or a login form that sets a cookie
  holding a digest of the token, never the token) and/or HTTP basic auth.
- **Headers**: every response forbids framing, sniffing and caching; pages get a
  Content-Security-Policy whose only script and style are the page's own, by nonce, so
  even an escaping bug could not run injected script.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import secrets
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "pgqrs_dashboard_csrf"
AUTH_COOKIE = "pgqrs_dashboard_auth"
FLASH_COOKIE = "pgqrs_dashboard_flash"
MAX_FORM_BYTES = 16 * 1024
"""Forms are a few ids and words; anything bigger is refused before parsing."""

BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


def page_csp(nonce: str) -> str:
    """The Content-Security-Policy of an HTML page with one inline script and style."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'")


def base_path(request: Request) -> str:
    """The path the dashboard is served under ('' at the root, '/pgqrs' when mounted)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _cookie_path(request: Request) -> str:
    return base_path(request) + "/"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _sign(secret: bytes, purpose: str, value: str) -> str:
    return hmac.new(secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


class Csrf:
    """Signed double-submit CSRF tokens for one dashboard."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def token(self, request: Request) -> tuple[str, str | None]:
        """The form token for this browser, and a new cookie value to set (or None)."""
        value = request.cookies.get(CSRF_COOKIE)
        new = None
        if not value or len(value) > 128:
            value = new = secrets.token_urlsafe(32)
        return _sign(self._secret, "csrf", value), new

    def set_cookie(self, request: Request, response: Response, value: str) -> None:
        """Attach the CSRF cookie to ``response``."""
        response.set_cookie(CSRF_COOKIE, value, path=_cookie_path(request), httponly=True,
                            samesite="strict", secure=_secure(request))

    def check(self, request: Request, form: dict[str, str]) -> str | None:
        """None if the POST is genuine, else why it was refused."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "the request came from another site"
        origin = request.headers.get("origin")
        # Hosts only: behind a TLS-terminating proxy the app sees http while the browser
        # says https. The signed token below is the real check; this one is extra.
        if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
            return "the request came from another origin"
        value = request.cookies.get(CSRF_COOKIE)
        sent = form.get("csrf", "")
        if not value or not sent:
            return "the form's security token is missing (reload the page and try again)"
        if not hmac.compare_digest(sent, _sign(self._secret, "csrf", value)):
            return "the form's security token is invalid (reload the page and try again)"
        return None


class Flash:
    """A one-shot notice carried across the redirect that follows an action."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def set(self, request: Request, response: Response, kind: str, text: str) -> None:
        """Attach a notice for the next page this browser loads."""
        data = base64.urlsafe_b64encode(json.dumps([kind, text[:500]]).encode()).decode()
        response.set_cookie(FLASH_COOKIE, f"{data}.{_sign(self._secret, 'flash', data)}",
                            path=_cookie_path(request), httponly=True, samesite="strict",
                            secure=_secure(request))

    def read(self, request: Request) -> tuple[str, str] | None:
        """The pending notice, if any and genuine."""
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw:
            return None
        data, _, signature = raw.partition(".")
        if not hmac.compare_digest(signature, _sign(self._secret, "flash", data)):
            return None
        try:
            kind, text = json.loads(base64.urlsafe_b64decode(data))
        except (ValueError, binascii.Error):
            return None
        return str(kind), str(text)

    def clear(self, request: Request, response: Response) -> None:
        """Drop the notice once a page has shown it."""
        if FLASH_COOKIE in request.cookies:
            response.delete_cookie(FLASH_COOKIE, path=_cookie_path(request))


async def read_form(request: Request) -> dict[str, str] | None:
    """The URL-encoded body as a dict (first value wins), or None if unacceptable."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    form: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(key, value)
    return form


def safe_next(request: Request, target: str | None, default: str) -> str:
    """``target`` if it is a path inside the dashboard, else ``default`` (no open redirect)."""
    if not target:
        return default
    parts = urlsplit(target)
    base = base_path(request)
    if (parts.scheme or parts.netloc or not target.startswith(base + "/")
            or target.startswith("//") or "\\" in target):
        return default
    return target


class SecurityHeaders:
    """ASGI middleware: the base headers on every response, and a strict CSP by default."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in BASE_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", _DEFAULT_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)


_LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>pgqrs dashboard: sign in</title></head><body>
<h1>pgqrs dashboard</h1><p>This dashboard needs its access token.</p>
<form method="post" action="{action}"><label>Token <input type="password" name="token"
autocomplete="current-password" autofocus></label> <button type="submit">Sign in</button>
</form></body></html>"""


class Authentication:
    """ASGI middleware: a bearer token and/or HTTP basic auth in front of the dashboard."""

    def __init__(self, app: ASGIApp, *, secret: bytes, token: str | None,
                 basic_auth: tuple[str, str] | None) -> None:
        self.app = app
        self._secret = secret
        self._token = token
        self._basic = basic_auth

    def _token_ok(self, request: Request) -> bool:
        if self._token is None:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(),
                                                              self._token.encode()):
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return hmac.compare_digest(cookie, _sign(self._secret, "auth", self._token))

    def _basic_ok(self, request: Request) -> bool:
        if self._basic is None:
            return False
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, binascii.Error):
            return False
        # Both compared, always, so the timing does not tell which one was wrong.
        user_ok = hmac.compare_digest(user.encode(), self._basic[0].encode())
        password_ok = hmac.compare_digest(password.encode(), self._basic[1].encode())
        return user_ok and password_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if self._token_ok(request) or self._basic_ok(request):
            await self.app(scope, receive, send)
            return
        login = base_path(request) + "/login"
        if self._token is not None and request.url.path == login and request.method == "POST":
            response = await self._login(request)
        else:
            response = self._challenge(login)
        await response(scope, receive, send)

    async def _login(self, request: Request) -> Response:
        form = await read_form(request) or {}
        given = form.get("token", "")
        if not (self._token and hmac.compare_digest(given.encode(), self._token.encode())):
            return self._challenge(base_path(request) + "/login")
        response = RedirectResponse(base_path(request) + "/", status_code=303)
        response.set_cookie(AUTH_COOKIE, _sign(self._secret, "auth", self._token),
                            path=_cookie_path(request), httponly=True, samesite="strict",
                            secure=_secure(request))
        return response

    def _challenge(self, login: str) -> Response:
        schemes = []
        if self._basic is not None:
            schemes.append('Basic realm="pgqrs dashboard", charset="UTF-8"')
        if self._token is not None:
            schemes.append('Bearer realm="pgqrs dashboard"')
        headers = {"WWW-Authenticate": ", ".join(schemes)}
        if self._token is not None:
            page = _LOGIN_PAGE.format(action=html.escape(login, quote=True))
            return HTMLResponse(page, status_code=401, headers=headers)
        return Response("Authentication required.\n", status_code=401, headers=headers,
                        media_type="text/plain")
