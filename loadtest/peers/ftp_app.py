"""pyftpdlib peer: anonymous read-only access to ROOT, and USER with write access.

Run by the harness with the peers' venv python:  python ftp_app.py ROOT PORT USER PASSWORD
"""

import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main() -> None:
    root, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    logging.basicConfig(level=logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root, perm="elr")
    authorizer.add_user(user, password, root, perm="elradfmw")
    handler = type("BenchHandler", (FTPHandler,), {"authorizer": authorizer})
    server = FTPServer(("127.0.0.1", port), handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
