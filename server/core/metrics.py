"""Counters of what the server did, readable from Python and as Prometheus text.

One instance per process (`METRICS`).  Counters are plain integer attributes bumped
on the hot path — no locks (one event loop per process), no labels machinery.
`render()` produces the text exposition format served at `GET /metrics` when the
server runs with `--metrics`.
"""

from __future__ import annotations

import weakref
from typing import Any

from .loans import LoanLedger

__all__ = ["Metrics", "METRICS"]


class Metrics:
    __slots__ = (
        "responses_total", "bytes_sendfile", "bytes_gather", "bytes_copy",
        "connections_open", "connections_total", "requests_rejected",
        "send_errors", "bytes_received_splice", "bytes_received_copy", "ledger",
        "variants_built", "variants_dropped", "variant_bytes_held",
        "channels", "fanout_dropped", "fanout_skipped",
        "zerocopy_sends", "zerocopy_completions", "zerocopy_copied", "zerocopy_fallbacks",
        "zerocopy_enobufs", "zerocopy_pending_bytes",
    )

    def __init__(self, ledger: LoanLedger | None = None) -> None:
        self.responses_total = 0
        self.bytes_sendfile = 0
        self.bytes_gather = 0
        self.bytes_copy = 0      # the one copy path (TLS), counted as rule 5 asks
        self.connections_open = 0
        self.connections_total = 0
        self.requests_rejected = 0
        self.send_errors = 0
        self.bytes_received_splice = 0   # uploads moved socket → file inside the kernel
        self.bytes_received_copy = 0     # uploads that passed through a user buffer
        self.ledger = ledger or LoanLedger(64 << 20)
        # Compressed variants built in memory (static/compression.py).
        self.variants_built = 0
        self.variants_dropped = 0        # because their file changed
        self.variant_bytes_held = 0
        # Fan-out channels register themselves here (fanout.py); the gauges are summed
        # over the live ones when read, so a channel that is gone counts for nothing.
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self.fanout_dropped = 0          # slow readers cut off (policy "drop")
        self.fanout_skipped = 0          # chunks slow readers jumped over (policy "skip")
        # --zerocopy (zerocopy.py): calls made with MSG_ZEROCOPY, calls the kernel's
        # notices confirmed, of those the ones it copied anyway, connections that fell
        # back to the ordinary path, ENOBUFS refusals, and bytes awaiting notices
        # (also counted in the ledger: they are on loan).
        self.zerocopy_sends = 0
        self.zerocopy_completions = 0
        self.zerocopy_copied = 0
        self.zerocopy_fallbacks = 0
        self.zerocopy_enobufs = 0
        self.zerocopy_pending_bytes = 0

    def fanout(self) -> tuple[int, int, int]:
        """(readers, chunks held, bytes held) over every live fan-out channel."""
        readers = chunks = held = 0
        for channel in list(self.channels):
            readers += channel.readers
            chunks += channel.chunks_held
            held += channel.bytes_held
        return readers, chunks, held

    def snapshot(self) -> dict[str, int]:
        readers, chunks, held = self.fanout()
        return {
            "responses_total": self.responses_total,
            "bytes_sent_sendfile": self.bytes_sendfile,
            "bytes_sent_gather": self.bytes_gather,
            "bytes_sent_copy": self.bytes_copy,
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "requests_rejected": self.requests_rejected,
            "send_errors": self.send_errors,
            "bytes_received_splice": self.bytes_received_splice,
            "bytes_received_copy": self.bytes_received_copy,
            "loans_outstanding": self.ledger.outstanding,
            "loans_peak": self.ledger.peak,
            "compressed_variants_built": self.variants_built,
            "compressed_variants_dropped": self.variants_dropped,
            "compressed_variant_bytes": self.variant_bytes_held,
            "fanout_readers": readers,
            "fanout_chunks_held": chunks,
            "fanout_bytes_held": held,
            "fanout_dropped": self.fanout_dropped,
            "fanout_skipped": self.fanout_skipped,
            "zerocopy_sends": self.zerocopy_sends,
            "zerocopy_completions": self.zerocopy_completions,
            "zerocopy_copied": self.zerocopy_copied,
            "zerocopy_fallbacks": self.zerocopy_fallbacks,
            "zerocopy_enobufs": self.zerocopy_enobufs,
            "zerocopy_pending_bytes": self.zerocopy_pending_bytes,
        }

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        led = self.ledger
        readers, chunks, held = self.fanout()
        lines = [
            "# HELP pageloan_responses_total Responses answered (status line queued for the kernel).",
            "# TYPE pageloan_responses_total counter",
            f"pageloan_responses_total {self.responses_total}",
            "# HELP pageloan_bytes_sent_total Bytes accepted by the kernel, by send path.",
            "# TYPE pageloan_bytes_sent_total counter",
            f'pageloan_bytes_sent_total{{path="sendfile"}} {self.bytes_sendfile}',
            f'pageloan_bytes_sent_total{{path="gather"}} {self.bytes_gather}',
            f'pageloan_bytes_sent_total{{path="copy"}} {self.bytes_copy}',
            "# HELP pageloan_bytes_received_total Upload bytes written to files, by receive path.",
            "# TYPE pageloan_bytes_received_total counter",
            f'pageloan_bytes_received_total{{path="splice"}} {self.bytes_received_splice}',
            f'pageloan_bytes_received_total{{path="copy"}} {self.bytes_received_copy}',
            "# HELP pageloan_loans_outstanding Payload bytes lent to transmitters, not yet accepted.",
            "# TYPE pageloan_loans_outstanding gauge",
            f"pageloan_loans_outstanding {led.outstanding}",
            "# HELP pageloan_loans_peak Highest pageloan_loans_outstanding seen.",
            "# TYPE pageloan_loans_peak gauge",
            f"pageloan_loans_peak {led.peak}",
            "# HELP pageloan_loan_budget_bytes Global loan budget.",
            "# TYPE pageloan_loan_budget_bytes gauge",
            f"pageloan_loan_budget_bytes {led.budget}",
            "# HELP pageloan_connections_open Client connections open now.",
            "# TYPE pageloan_connections_open gauge",
            f"pageloan_connections_open {self.connections_open}",
            "# HELP pageloan_connections_total Client connections accepted.",
            "# TYPE pageloan_connections_total counter",
            f"pageloan_connections_total {self.connections_total}",
            "# HELP pageloan_requests_rejected_total Requests answered with a 4xx/5xx by the protocol layer.",
            "# TYPE pageloan_requests_rejected_total counter",
            f"pageloan_requests_rejected_total {self.requests_rejected}",
            "# HELP pageloan_send_errors_total Connections that failed while sending.",
            "# TYPE pageloan_send_errors_total counter",
            f"pageloan_send_errors_total {self.send_errors}",
            "# HELP pageloan_compressed_variants_built_total Compressed variants built in memory (once per file and coding).",
            "# TYPE pageloan_compressed_variants_built_total counter",
            f"pageloan_compressed_variants_built_total {self.variants_built}",
            "# HELP pageloan_compressed_variants_dropped_total Variants dropped because their file changed.",
            "# TYPE pageloan_compressed_variants_dropped_total counter",
            f"pageloan_compressed_variants_dropped_total {self.variants_dropped}",
            "# HELP pageloan_compressed_variant_bytes Bytes of compressed variants held in memory.",
            "# TYPE pageloan_compressed_variant_bytes gauge",
            f"pageloan_compressed_variant_bytes {self.variant_bytes_held}",
            "# HELP pageloan_fanout_readers Subscribers of fan-out channels now.",
            "# TYPE pageloan_fanout_readers gauge",
            f"pageloan_fanout_readers {readers}",
            "# HELP pageloan_fanout_chunks_held Chunks fan-out channels hold (replay window and lagging readers), once each.",
            "# TYPE pageloan_fanout_chunks_held gauge",
            f"pageloan_fanout_chunks_held {chunks}",
            "# HELP pageloan_fanout_bytes_held Bytes of the chunks fan-out channels hold, counted once however many readers.",
            "# TYPE pageloan_fanout_bytes_held gauge",
            f"pageloan_fanout_bytes_held {held}",
            "# HELP pageloan_fanout_dropped_total Slow readers cut off by a channel with policy drop.",
            "# TYPE pageloan_fanout_dropped_total counter",
            f"pageloan_fanout_dropped_total {self.fanout_dropped}",
            "# HELP pageloan_fanout_skipped_total Chunks slow readers skipped, moved to the live edge by policy skip.",
            "# TYPE pageloan_fanout_skipped_total counter",
            f"pageloan_fanout_skipped_total {self.fanout_skipped}",
            "# HELP pageloan_zerocopy_sends_total Gather calls made with MSG_ZEROCOPY (--zerocopy).",
            "# TYPE pageloan_zerocopy_sends_total counter",
            f"pageloan_zerocopy_sends_total {self.zerocopy_sends}",
            "# HELP pageloan_zerocopy_completions_total Zerocopy calls whose completion notice arrived.",
            "# TYPE pageloan_zerocopy_completions_total counter",
            f"pageloan_zerocopy_completions_total {self.zerocopy_completions}",
            "# HELP pageloan_zerocopy_copied_total Completed zerocopy calls the kernel copied anyway (always, to a peer on this host).",
            "# TYPE pageloan_zerocopy_copied_total counter",
            f"pageloan_zerocopy_copied_total {self.zerocopy_copied}",
            "# HELP pageloan_zerocopy_fallbacks_total Connections that went back to ordinary sends after repeated copies.",
            "# TYPE pageloan_zerocopy_fallbacks_total counter",
            f"pageloan_zerocopy_fallbacks_total {self.zerocopy_fallbacks}",
            "# HELP pageloan_zerocopy_enobufs_total Zerocopy calls refused with ENOBUFS (optmem limit) and sent ordinarily.",
            "# TYPE pageloan_zerocopy_enobufs_total counter",
            f"pageloan_zerocopy_enobufs_total {self.zerocopy_enobufs}",
            "# HELP pageloan_zerocopy_pending_bytes Bytes sent with MSG_ZEROCOPY awaiting their notice (part of pageloan_loans_outstanding).",
            "# TYPE pageloan_zerocopy_pending_bytes gauge",
            f"pageloan_zerocopy_pending_bytes {self.zerocopy_pending_bytes}",
        ]
        return "\n".join(lines) + "\n"


METRICS = Metrics()
