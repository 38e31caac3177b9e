"""What both consoles share: sign-in, sessions, CSRF, role checks, the local-only rule, templates.

Sessions are random 256-bit tokens held in memory (a restart signs everyone out) and expire
after ``session_ttl_s`` without exception. Every form carries a per-session CSRF token
(OWASP's synchronizer token pattern); the sign-in form, before a session exists, a
double-submit token. Cookies are HttpOnly and SameSite=Strict. Each sign-in (accepted or
refused) and each refused request is written to the console's audit log.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from compliance.audit import AuditLog, Event
from console.accounts import AccountStore, Role
from console.client_certs import CertificateRefused, CertificateSignIn, peer_certificate

log = logging.getLogger(__name__)

SESSION_COOKIE = "fedcare_session"
LOGIN_CSRF_COOKIE = "fedcare_login_csrf"
CSRF_FIELD = "csrf_token"
DEFAULT_SESSION_TTL_S = 30 * 60
# Password guessing: after this many failed sign-ins for one user within the window, that user's
# sign-ins are refused until the oldest failure leaves the window (OWASP authentication cheat sheet).
MAX_FAILED_SIGN_INS = 5
LOCKOUT_WINDOW_S = 15 * 60
LOCAL_CLIENTS = frozenset({"127.0.0.1", "::1", "localhost"})
# Every page: scripts, styles and images from the console itself only (no inline script), never framed
# (an approve button must not be clickjacked), no referrer leaving with a study id.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_DIR = Path(__file__).parent / "static"

templates = Environment(loader=PackageLoader("console", "templates"), autoescape=select_autoescape(["html", "j2"]))


@dataclass
class Session:
    token: str
    user: str
    role: Role
    csrf: str
    expires_at: float


@dataclass
class Sessions:
    """Signed-in users, in memory; ``clock`` is injectable so expiry can be tested without waiting."""

    ttl_s: float = DEFAULT_SESSION_TTL_S
    clock: Callable[[], float] = time.time
    _by_token: dict[str, Session] = field(default_factory=dict)

    def start(self, user: str, role: Role) -> Session:
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), self.clock() + self.ttl_s)
        self._by_token[s.token] = s
        return s

    def lookup(self, token: str | None) -> tuple[Session | None, str]:
        """(the session, '') or (None, why not)."""
        s = self._by_token.get(token or "")
        if s is None:
            return None, "no session: not signed in"
        if self.clock() >= s.expires_at:
            del self._by_token[s.token]
            return None, "session expired"
        return s, ""

    def end(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)


Handler = Callable[[Request, Session], Awaitable[Response]]


@dataclass
class ConsoleCore:
    """One console's accounts, sessions and audit log, and the guards its routes go through."""

    title: str
    accounts: AccountStore
    audit: AuditLog
    sessions: Sessions
    allow_remote: bool = True  # the site console is built with False unless configured
    secure_cookies: bool = False
    nav: list[tuple[str, str, frozenset[Role]]] = field(default_factory=list)  # (label, path, roles)
    failures: dict[str, list[float]] = field(default_factory=dict)  # user -> times of recent failed sign-ins
    certificates: CertificateSignIn | None = None  # mutual-TLS sign-in (console.client_certs), when served over TLS

    # --- audit --------------------------------------------------------------------------------------
    def refuse(self, request: Request, reason: str, *, status: int, session: Session | None = None) -> Response:
        self.audit.append(Event.CONSOLE_REFUSED, user=session.user if session else None,
                          role=session.role.value if session else None, client=_client(request),
                          path=request.url.path, reason=reason)
        log.info("console refused %s %s from %s: %s", request.method, request.url.path, _client(request), reason)
        if status == 303:
            return RedirectResponse(f"/login?reason={reason.split(':')[0]}", status_code=303)
        return self.page(request, "refused.html.j2", {"reason": reason}, session=session, status=status)

    # --- rendering ----------------------------------------------------------------------------------
    def page(self, request: Request, template: str, context: dict[str, Any], *, session: Session | None,
             status: int = 200) -> HTMLResponse:
        nav = [(label, path) for label, path, roles in self.nav if session is not None and session.role in roles]
        html = templates.get_template(template).render(
            title=self.title, session=session, nav=nav, csrf_field=CSRF_FIELD,
            csrf=session.csrf if session else "", **context)
        return HTMLResponse(html, status_code=status)

    # --- guards -------------------------------------------------------------------------------------
    def local_only(self, request: Request) -> Response | None:
        if self.allow_remote or _client(request) in LOCAL_CLIENTS:
            return None
        return self.refuse(request, f"remote client {_client(request)}: this console accepts local connections "
                                    "only (start it with --allow-remote behind your proxy to change that)",
                           status=403)

    def guarded(self, handler: Handler, roles: Iterable[Role]) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for a signed-in user with one of ``roles``; a POST also needs the session's CSRF token."""
        allowed = frozenset(roles)

        async def endpoint(request: Request) -> Response:
            if (refused := self.local_only(request)) is not None:
                return refused
            session, why = self.sessions.lookup(request.cookies.get(SESSION_COOKIE))
            if session is None:
                return self.refuse(request, why, status=303)
            if session.role not in allowed:
                return self.refuse(request, f"role {session.role.value} may not open {request.url.path} (it needs "
                                            f"{' or '.join(sorted(r.value for r in allowed))})",
                                   status=403, session=session)
            if request.method == "POST":
                form = await request.form()
                if not hmac.compare_digest(str(form.get(CSRF_FIELD, "")), session.csrf):
                    return self.refuse(request, "missing or wrong CSRF token: reload the page and submit again",
                                       status=403, session=session)
            return await handler(request, session)

        return endpoint

    # --- sign-in ------------------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        if (refused := self.local_only(request)) is not None:
            return refused
        token = secrets.token_urlsafe(32)
        reason = request.query_params.get("reason", "")
        with_certificate = self.certificates is not None and peer_certificate(request.scope) is not None
        response = self.page(request, "login.html.j2", {"login_csrf": token, "reason": reason, "error": "",
                                                        "with_certificate": with_certificate}, session=None)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=self.secure_cookies)
        return response

    async def login(self, request: Request) -> Response:
        if (refused := self.local_only(request)) is not None:
            return refused
        form = await request.form()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(str(form.get(CSRF_FIELD, "")), cookie):
            return self.refuse(request, "sign-in without its CSRF token: reload the sign-in page", status=403)
        fields = {"user": user[:64], "client": _client(request)}
        now = self.sessions.clock()
        recent = [t for t in self.failures.get(user, []) if now - t < LOCKOUT_WINDOW_S]
        if len(recent) >= MAX_FAILED_SIGN_INS:
            why = (f"{len(recent)} failed sign-ins for this user in the last {LOCKOUT_WINDOW_S // 60} minutes; "
                   "try again later or ask an administrator to reset the password")
            self.audit.append(Event.CONSOLE_SIGN_IN, role=None, outcome="refused", reason=why, **fields)
            return self.page(request, "login.html.j2", {"login_csrf": cookie, "reason": "", "error": why},
                             session=None, status=429)
        account = await run_in_threadpool(self.accounts.check, user, password)  # scrypt: off the event loop
        if account is None:
            if len(self.failures) > 10_000:  # names tried at random: forget those outside the window
                self.failures = {u: ts for u, ts in self.failures.items() if now - ts[-1] < LOCKOUT_WINDOW_S}
            self.failures[user] = [*recent, now]
            self.audit.append(Event.CONSOLE_SIGN_IN, role=None, outcome="refused",
                              reason="unknown user or wrong password", **fields)
            return self.page(request, "login.html.j2", {"login_csrf": cookie, "reason": "",
                                                        "error": "unknown user or wrong password"},
                             session=None, status=401)
        self.failures.pop(user, None)
        return self._signed_in(request, account.user, account.role, how="password")

    async def certificate_login(self, request: Request) -> Response:
        """Sign in as the holder of the client certificate this TLS connection verified (mutual TLS)."""
        if (refused := self.local_only(request)) is not None:
            return refused
        form = await request.form()
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(str(form.get(CSRF_FIELD, "")), cookie):
            return self.refuse(request, "sign-in without its CSRF token: reload the sign-in page", status=403)
        pem = peer_certificate(request.scope)
        if self.certificates is None or pem is None:
            return self.refuse(request, "no client certificate on this connection: sign in with a password, or "
                                        "connect over TLS with a certificate from `fedcare pki`", status=403)
        try:
            user, role = await run_in_threadpool(self.certificates.identity, pem)
        except CertificateRefused as e:
            self.audit.append(Event.CONSOLE_SIGN_IN, user=None, role=None, client=_client(request), outcome="refused",
                              reason=str(e))
            return self.refuse(request, str(e), status=403)
        return self._signed_in(request, user, role, how="certificate")

    def _signed_in(self, request: Request, user: str, role: Role, *, how: str) -> Response:
        session = self.sessions.start(user, role)
        self.audit.append(Event.CONSOLE_SIGN_IN, user=user[:64], role=role.value, client=_client(request),
                          outcome="accepted", reason=how)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="strict",
                            secure=self.secure_cookies, max_age=int(self.sessions.ttl_s))
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    async def logout(self, request: Request, session: Session) -> Response:
        self.sessions.end(session.token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    def app(self, routes: list[BaseRoute]) -> Starlette:
        base: list[BaseRoute] = [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/login/certificate", self.certificate_login, methods=["POST"]),
            Route("/logout", self.guarded(self.logout, Role), methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
        app = Starlette(routes=base + routes, middleware=[Middleware(SecurityHeaders)])
        app.state.core = self
        return app


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response (streams included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"
