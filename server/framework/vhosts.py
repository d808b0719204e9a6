"""Virtual hosts: one listener, several sites, chosen by the request's `Host`.

Theory of operation: `VirtualHosts` is an application (`app(request)`) in front of
one Application per site.  The Host field is looked up once per distinct spelling:
its raw bytes map to the site in a small dict, so a request costs one header scan
and one dict hit.  Matching is case-insensitive and ignores the port
(`Example.COM:8443` is `example.com`); an IPv6 literal keeps its brackets; a
trailing dot is dropped.  An unknown Host, or none (HTTP/1.0), gets the default site.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..http.request import Request
from .application import Application

__all__ = ["VirtualHosts", "normalise_host"]

_SPELLINGS_MAX = 1024


def normalise_host(host: str) -> str:
    """`Example.COM:8080` → `example.com`; `[::1]:80` → `[::1]`; a trailing dot dropped."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    name, _, _port = host.partition(":")
    return name.rstrip(".")


class VirtualHosts:
    """Answers each request with the Application of the site its Host names."""

    def __init__(self, sites: Iterable[tuple[Iterable[str], Application]], default: Application) -> None:
        self.default = default
        self.sites: list[Application] = []
        self._by_name: dict[str, Application] = {}
        for hosts, app in sites:
            self.sites.append(app)
            for host in hosts:
                self._by_name.setdefault(normalise_host(host), app)
        if default not in self.sites:
            self.sites.insert(0, default)
        self._by_spelling: dict[bytes, Application] = {}
        self.state = default.state

    @property
    def websocket_options(self) -> Any:
        return self.default.websocket_options

    @websocket_options.setter
    def websocket_options(self, value: Any) -> None:
        # Server-wide options (set by the CLI on "the" application) hold for every site.
        for app in self.sites:
            app.websocket_options = value

    def site_for(self, host: bytes | None) -> Application:
        if host is None:
            return self.default
        app = self._by_spelling.get(host)
        if app is None:
            app = self._by_name.get(normalise_host(host.decode("latin-1")), self.default)
            if len(self._by_spelling) >= _SPELLINGS_MAX:
                self._by_spelling.clear()
            self._by_spelling[host] = app
        return app

    def __call__(self, request: Request) -> Any:
        app = self.site_for(request.header(b"host"))
        request.app = app
        return app(request)

    async def startup(self) -> None:
        for app in self.sites:
            await app.startup()

    async def shutdown(self) -> None:
        for app in reversed(self.sites):
            await app.shutdown()
