"""Counters of what the server did, readable from Python and as Prometheus text.

One instance per process (`METRICS`).  Counters are plain integer attributes bumped
on the hot path — no locks (one event loop per process), no labels machinery.
`render()` produces the text exposition format served at `GET /metrics` when the
server runs with `--metrics`.

Under `--workers N` each worker counts for itself, and the kernel hands a scrape to
whichever worker it likes; answering with that worker's own numbers would make
counters jump up and down between scrapes.  So the master maps one small shared
array before forking (`SharedMetrics`, anonymous MAP_SHARED memory: one row of
64-bit cells per worker slot) and each worker publishes its numbers into its row
once a second and just before it answers a scrape, which then sums every row —
the approach of Prometheus' multiprocess mode, without files.  Counters never go
down between scrapes: every row only grows, and the scraped worker's own row is
fresh.  A worker restarted into a slot starts from the counters its predecessor
left there (gauges start from zero, they describe the living).
"""

from __future__ import annotations

import mmap
import weakref
from typing import Any

from .loans import LoanLedger

__all__ = ["Metrics", "METRICS", "SharedMetrics"]


class Metrics:
    __slots__ = (
        "responses_total", "bytes_sendfile", "bytes_gather", "bytes_copy",
        "connections_open", "connections_total", "requests_rejected",
        "send_errors", "bytes_received_splice", "bytes_received_copy", "ledger",
        "variants_built", "variants_dropped", "variant_bytes_held",
        "channels", "fanout_dropped", "fanout_skipped",
        "zerocopy_sends", "zerocopy_completions", "zerocopy_copied", "zerocopy_fallbacks",
        "zerocopy_enobufs", "zerocopy_pending_bytes",
        "shared", "slot", "_base",
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
        # Under --workers: the array every worker publishes into, and this one's row.
        self.shared: SharedMetrics | None = None
        self.slot = 0
        self._base: dict[str, int] = {}

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

    # -- across workers ------------------------------------------------------------------
    def attach(self, shared: SharedMetrics, slot: int) -> None:
        """Publish into `shared` row `slot`, carrying on from the counters left there."""
        self.shared = shared
        self.slot = slot
        row = shared.read(slot)
        self._base = {name: row[name] for name in SharedMetrics.COUNTERS}
        self.publish()

    def publish(self, _now: float | None = None) -> None:
        """Write this process's numbers into its shared row (no-op without one)."""
        shared = self.shared
        if shared is not None:
            shared.write(self.slot, self._values())

    def _values(self) -> dict[str, int]:
        readers, chunks, held = self.fanout()
        led = self.ledger
        values = {name: getattr(self, name) for name in SharedMetrics.INTEGERS}
        values.update(ledger_outstanding=led.outstanding, ledger_peak=led.peak, ledger_budget=led.budget,
                      fanout_readers=readers, fanout_chunks=chunks, fanout_held=held)
        for name, base in self._base.items():
            values[name] += base
        return values

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4); every worker's sum under --workers."""
        shared = self.shared
        if shared is None:
            return self._render_text()
        self.publish()
        return shared.totals()._render_text()

    def _render_text(self) -> str:
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


class _Totals(Metrics):
    """Every worker's numbers summed, shaped like one Metrics so it renders the same."""

    __slots__ = ("_fanout",)
    _fanout: tuple[int, int, int]

    def fanout(self) -> tuple[int, int, int]:
        return self._fanout


# The integer attributes of Metrics, then what the ledger and channels report.
_INTEGERS = tuple(name for name in Metrics.__slots__
                  if name not in ("ledger", "channels", "shared", "slot", "_base"))
_FIELDS = _INTEGERS + ("ledger_outstanding", "ledger_peak", "ledger_budget",
                       "fanout_readers", "fanout_chunks", "fanout_held")
_GAUGES = frozenset({"connections_open", "variant_bytes_held", "zerocopy_pending_bytes", "ledger_outstanding",
                     "ledger_peak", "ledger_budget", "fanout_readers", "fanout_chunks",
                     "fanout_held"})
_COUNTERS = tuple(name for name in _FIELDS if name not in _GAUGES)


class SharedMetrics:
    """One row of 64-bit cells per worker slot, in memory shared across fork()."""

    INTEGERS = _INTEGERS
    FIELDS = _FIELDS
    GAUGES = _GAUGES
    COUNTERS = _COUNTERS

    def __init__(self, workers: int) -> None:
        self.workers = workers
        width = len(self.FIELDS)
        # fileno -1: anonymous memory; MAP_SHARED (mmap's default) survives fork shared.
        self._map = mmap.mmap(-1, max(1, workers) * width * 8)
        self._cells = memoryview(self._map).cast("q")
        self._index = {name: i for i, name in enumerate(self.FIELDS)}
        self._width = width

    def write(self, slot: int, values: dict[str, int]) -> None:
        start = slot * self._width
        cells = self._cells
        for name, i in self._index.items():
            cells[start + i] = values.get(name, 0)

    def read(self, slot: int) -> dict[str, int]:
        start = slot * self._width
        cells = self._cells
        return {name: cells[start + i] for name, i in self._index.items()}

    def totals(self) -> Metrics:
        summed = dict.fromkeys(self.FIELDS, 0)
        for slot in range(self.workers):
            for name, value in self.read(slot).items():
                summed[name] += value
        totals = _Totals(LoanLedger(summed["ledger_budget"]))
        for name in self.INTEGERS:
            setattr(totals, name, summed[name])
        totals.ledger.outstanding = summed["ledger_outstanding"]
        totals.ledger.peak = summed["ledger_peak"]
        totals._fanout = (summed["fanout_readers"], summed["fanout_chunks"], summed["fanout_held"])
        return totals


METRICS = Metrics()
