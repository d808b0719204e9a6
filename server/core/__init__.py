"""core: the minimal-copy send path and what it lends, with no HTTP in it.

Owns the Message (header stack + immutable payload slices), the loan ledger and its
budgets, the transmitter (the only code that calls `send*`), the open-file cache
(descriptors, stat identity, mmap windows), the socket → file receive path, fan-out
of one stream to many readers, metrics and safe path confinement.

May import: the standard library and third-party packages only.  Nothing in
`server.core` imports another `server` package: every layer above builds on it.
"""
