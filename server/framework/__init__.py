"""framework: the drop-in handler API and the Application that answers requests.

Owns routing (patterns, converters, mounts), the per-module registries that the
decorators fill at import time, request hooks and middleware, the conversion of a
handler's return value into a Message, the loader and reloader of handler modules,
uploads, server-sent events, virtual hosts (one Application per Host), and
`build_application`, which puts a static site and
the handler modules together into one Application.

May import: `server.core`, `server.http` and `server.static`.  Never the CLI.
Handler modules should import from `server` (the public namespace), not from here.
"""
