"""What every answer of the gateway carries for browsers, whatever route made it.

A route that sets a header keeps its own (the dashboard's page and the viewer have their own
Content-Security-Policy); any other answer gets: no MIME sniffing, no referrer, and a policy
that lets no page frame it and, for what is not a page nor a script (JSON, DICOM, images), run
nothing at all. A script gets none: a worker's script runs under the policy it is served with,
and the viewer's workers load more scripts.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULTS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
NOT_HTML_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
HTML_CSP = "frame-ancestors 'none'"  # an HTML page without a policy of its own: /docs, /redoc


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULTS.items():
                    headers.setdefault(name, value)
                kind = headers.get("content-type", "")
                if kind.startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", HTML_CSP)
                elif "javascript" not in kind:
                    headers.setdefault("Content-Security-Policy", NOT_HTML_CSP)
            await send(message)

        await self.app(scope, receive, sending)
