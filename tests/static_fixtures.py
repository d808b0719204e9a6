"""Old home of the threaded server and the raw client: now tests/harness.py.

Kept so that tests written against these names keep working; new tests import from
`harness` (servers, clients) and use the fixtures in conftest.py.
"""

from __future__ import annotations

from harness import RawClient, Response, ThreadedServer, serve_site
from harness import fetch_raw as fetch

__all__ = ["ThreadedServer", "serve_site", "RawClient", "Response", "fetch"]
