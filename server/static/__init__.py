"""static: a directory served the way nginx serves it.

Owns static-file semantics: safe lookup under the root, index files and
directory redirects, media types, validators and conditional requests, byte
ranges and multipart/byteranges, precompressed siblings and compressed variants
built once in memory, site rules (redirects, rewrites, basic auth, CORS, SPA
fallback, OPTIONS), Cache-Control policy, autoindex listings, error pages, `file_response` for handlers, and the static
site's own options.  Its answers are Messages whose payload slices are windows
and regions of the open-file cache's files.

May import: `server.core` and `server.http`.  Never `server.framework` or the CLI.
"""
