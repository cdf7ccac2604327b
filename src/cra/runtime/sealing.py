"""Sealing off the call path: a :class:`~cra.runtime.ports.Sealer` that appends in batches on a thread of its own.

``Resolver(ledger=…, seal_in_background=True)`` hands each operation's events and
attestation claims to a :class:`BackgroundSealer` and answers at once; the sealer
appends whatever has queued up, in order, in one durable batch (one fsync for
many calls), and signs the checkpoints operations asked for.

The contract, the same as ``cra serve``'s background sealing except that in
process nothing else is durable:

* **Acknowledged** means recorded in the resolver's stores (memory, by default),
  not yet in the ledger. A crash loses what was acknowledged and not yet sealed:
  at most what queued up during one append (a batch takes about a millisecond
  here).
* **flush()** waits until everything queued before it is sealed, and raises
  :class:`~cra.errors.LedgerError` if the ledger cannot append. Call it before
  reading the ledger, and before the process ends (``close()`` does).
* **Order** is kept: events are appended in the order operations queued them,
  so each session's chain reaches the ledger in order.
* A ledger that fails keeps the queue: the sealer logs the failure, waits, and
  tries the same batch again; nothing is dropped, and ``flush()`` says why it
  cannot finish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from cra.errors import LedgerError
from cra.runtime.records import AttestationClaim
from cra.trace.event import TraceEvent

__all__ = ["BackgroundSealer"]

_log = logging.getLogger(__name__)

#: Seconds between attempts while the ledger cannot append.
_RETRY_SECONDS = 0.5


class _Ledger(Protocol):
    """What the sealer needs of :class:`~cra.runtime.ledger.AuditLedger`."""

    def append(self, events: Sequence[TraceEvent], claims: Sequence[AttestationClaim] = ()) -> object: ...

    def checkpoint(self) -> object: ...


class BackgroundSealer:
    """Appends to ``ledger`` on a thread of its own, in batches, in the order operations queued them."""

    def __init__(self, ledger: _Ledger) -> None:
        self._ledger = ledger
        self._cond = threading.Condition()
        self._events: list[TraceEvent] = []
        self._claims: list[AttestationClaim] = []
        self._checkpoint = False
        self._queued = 0  # operations handed over so far
        self._sealed = 0  # operations whose events (and checkpoint) are in the ledger
        self._failure: Exception | None = None
        self._failures = 0  # attempts that failed so far
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="cra-sealer", daemon=True)
        self._thread.start()

    # -- the Sealer port -----------------------------------------------------------------------------------------------

    def append(self, events: Sequence[TraceEvent], claims: Sequence[AttestationClaim] = ()) -> None:
        """Queue an operation's events and claims; returns at once."""
        with self._cond:
            self._usable()
            self._events.extend(events)
            self._claims.extend(claims)
            self._queued += 1
            self._cond.notify_all()

    def checkpoint(self) -> None:
        """Queue a signed checkpoint, made once everything queued before it is appended."""
        with self._cond:
            self._usable()
            self._checkpoint = True
            self._queued += 1
            self._cond.notify_all()

    # -- waiting and stopping ------------------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is sealed. :class:`LedgerError` if an attempt to seal it
        fails meanwhile (what is queued stays queued and is tried again) or ``timeout`` passes."""
        with self._cond:
            target, failures = self._queued, self._failures
            done = self._cond.wait_for(lambda: self._sealed >= target or self._failures > failures, timeout)
            if self._sealed < target and self._failure is not None and self._failures > failures:
                raise LedgerError(f"the ledger cannot seal the queued events: {self._failure}") from self._failure
            if not done:
                raise LedgerError(f"the queued events were not sealed within {timeout} s")

    def close(self) -> None:
        """Seal what is queued, then stop the thread. Raises :class:`LedgerError` if that cannot be done,
        and then stops anyway: what is still queued is lost, and the error says how much."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closing = True
                left = len(self._events)
                self._cond.notify_all()
            self._thread.join()
            if left:
                _log.error("the sealer stopped with %d events not sealed", left)

    def _usable(self) -> None:
        if self._closing:
            raise LedgerError("the sealer is closed")

    # -- the thread ----------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._queued > self._sealed)
                if self._closing:
                    return
                events, claims, checkpoint, upto = self._events, self._claims, self._checkpoint, self._queued
                self._events, self._claims, self._checkpoint = [], [], False
            try:
                if events:
                    self._ledger.append(events, claims)
                if checkpoint:
                    self._ledger.checkpoint()
            except Exception as exc:  # noqa: BLE001 - a failing ledger must not end the sealer or lose the batch
                _log.exception("the ledger could not seal %d events; retried in %g s", len(events), _RETRY_SECONDS)
                with self._cond:
                    # Put the batch back in front of what queued since, so that order is kept.
                    self._events[:0] = events
                    self._claims[:0] = claims
                    self._checkpoint = self._checkpoint or checkpoint
                    self._failure = exc
                    self._failures += 1
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._closing, _RETRY_SECONDS)
                continue
            with self._cond:
                self._sealed = upto
                self._failure = None
                self._cond.notify_all()
