"""Old home of the handler-site fixture and the http.client helpers: now tests/harness.py
(helpers) and tests/conftest.py (the `handler_site` fixture).

Kept so that tests written against these names keep working (`handler_site =
handler_fixtures.handler_site` in a test module is the same fixture conftest provides).
"""

from __future__ import annotations

from conftest import handler_site
from harness import Reply, Site, fetch, fetch_on, raw_request, write_modules

__all__ = ["Reply", "fetch", "fetch_on", "handler_site", "Site", "write_modules", "raw_request"]
