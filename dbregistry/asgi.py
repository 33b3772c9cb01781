"""ASGI integration: each request reads its user's own writes, through a causal token in a cookie or header.

Plain ASGI, so it works with FastAPI, Starlette, Litestar or any ASGI server,
and importing it imports none of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["CausalConsistencyMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CausalConsistencyMiddleware:
    """Make each request's causal token current, and send the advanced one back.

    >>> app = FastAPI(lifespan=registry.lifespan)                                # doctest: +SKIP
    >>> app.add_middleware(CausalConsistencyMiddleware, registry=registry)      # doctest: +SKIP

    The token comes from the ``header`` (``X-Causal-Token``; for API clients and
    services) or else from the ``cookie`` (``dbregistry_causal``; for browsers).
    Reads made while handling the request go to a replica that has replayed what
    the token stands for, else to the primary. When the request wrote, the
    response carries the advanced token in the same header and in the cookie
    (``HttpOnly``, ``SameSite`` as given, ``Max-Age`` ``max_age`` seconds: long
    enough for any replica to catch up). A malformed token is ignored, never an error.
    Writes are counted when they commit before the response starts (the endpoint
    commits, as the registry's session dependencies expect).
    """

    def __init__(
        self,
        app: ASGIApp,
        registry: Registry,
        *,
        cookie: str | None = "dbregistry_causal",
        header: str | None = "x-causal-token",
        max_age: int = 300,
        secure: bool = False,
        same_site: Literal["lax", "strict", "none"] = "lax",
        path: str = "/",
    ) -> None:
        self.app = app
        self.registry = registry
        self.cookie = cookie
        self.header = header.lower() if header else None
        self._header_bytes = self.header.encode("latin-1") if self.header else None
        attributes = [f"Path={path}", f"Max-Age={max_age}", "HttpOnly", f"SameSite={same_site.capitalize()}"]
        if secure or same_site == "none":
            attributes.append("Secure")
        self._cookie_attributes = "; ".join(attributes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = self._token_of(scope)
        with self.registry.causal(given) as block:

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start":
                    token = block.token()
                    if token is not None and token != given:
                        message["headers"] = [*message.get("headers", ()), *self._headers(token)]
                await send(message)

            await self.app(scope, receive, send_with_token)

    def _token_of(self, scope: Scope) -> str | None:
        cookies: str | None = None
        for key, value in scope.get("headers", ()):
            if key == self._header_bytes:
                return str(value.decode("latin-1"))
            if key == b"cookie" and self.cookie:
                cookies = value.decode("latin-1")
        if cookies is None or not self.cookie:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookies)
        except CookieError:
            return None
        morsel = jar.get(self.cookie)
        return None if morsel is None else morsel.value

    def _headers(self, token: str) -> list[tuple[bytes, bytes]]:
        headers = []
        if self._header_bytes:
            headers.append((self._header_bytes, token.encode("ascii")))
        if self.cookie:
            headers.append((b"set-cookie", f"{self.cookie}={token}; {self._cookie_attributes}".encode("latin-1")))
        return headers
