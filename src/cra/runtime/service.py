"""The governance service: the resolver's semantics over durable, shared, per-tenant state.

Each tenant has its own :class:`~cra.runtime.resolver.Resolver`, holding only
the tenant's compiled atlases; sessions, chains, resolutions and approvals live
in the :class:`~cra.runtime.ports.StateStore`. An operation:

1. loads a :class:`~cra.runtime.workspace.Snapshot` of what it may touch;
2. runs the resolver's operation against it, synchronously (no await can
   interleave another operation on the same workspace). For a tenant whose
   atlases have ``wasm`` policies it runs in a module thread, in the tenant's
   turn, so a slow module never holds the event loop;
3. commits the changes in one transaction, and only then answers. A commit
   that lost a race with another writer is thrown away and the operation runs
   again on a new snapshot;
4. seals the committed events, with the attestations of their decisions, into
   the audit ledger. Events the process could not seal (it crashed, the disk
   was full) stay marked unsealed in the store and are sealed, in commit
   order, by the next operation or the next start.

Rate-limit and budget counters are the resolver's :class:`~cra.runtime.ports.CounterStore`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

from cra.errors import (
    AtlasError,
    ConflictError,
    CRAError,
    LedgerError,
    NotFoundError,
    Overloaded,
    ProtocolError,
    SandboxBuilding,
    UnavailableError,
    json_pointer,
)
from cra.policy.decision import Charge, Decision, LimitBreach
from cra.policy.modules import ModuleLoader
from cra.protocol.atlas import Atlas, parse_package
from cra.protocol.canonical import canonical_json
from cra.protocol.carp import CarpRequest, parse_carp_request
from cra.runtime.approvals import Approval, ApprovalTicket
from cra.runtime.clock import SystemClock
from cra.runtime.engine import Engine
from cra.runtime.execution import Executor, Outcome, Warming
from cra.runtime.ids import SystemIds
from cra.runtime.ledger import AuditLedger
from cra.runtime.memory import MemoryCounters
from cra.runtime.ports import AtlasDigests, Clock, CounterStore, IdSource, Signer, StateStore
from cra.runtime.records import (
    AtlasRecord,
    AttestationClaim,
    DecisionQuery,
    DecisionRecord,
    RunningCall,
    Session,
    SnapshotKeys,
)
from cra.runtime.resolver import PendingCall, Resolver
from cra.runtime.workspace import Changes, Snapshot, Workspace
from cra.trace.chain import ChainReport, check_chain
from cra.trace.event import TraceEvent, format_timestamp

__all__ = ["GovernanceService", "package_of"]

_log = logging.getLogger("cra.service")
_T = TypeVar("_T")
#: How often an operation that lost a race is run again before the caller gets a conflict.
_RETRIES: Final = 16
#: Why a call whose process stopped was recorded as failed.
_LOST_CALL: Final = "the process running this call stopped before it reported an outcome (its lease ran out)"
#: Seconds a client is told to wait while an executor is still being prepared.
_WARMING_RETRY_S: Final = 10
#: Threads that run the work of atlases with WebAssembly policy modules, off the event loop.
_MODULE_THREADS: Final = 4
#: The charges one attempt consumed, each with the time it was consumed at.
_Consumed = list[tuple[tuple[Charge, ...], float]]


def package_of(manifest: Mapping[str, Any], files: Mapping[str, str | bytes] | None = None) -> dict[str, bytes]:
    """An atlas package (relative path -> bytes) from a manifest and its context files."""
    if not isinstance(manifest, Mapping):
        raise AtlasError("", "the manifest must be a JSON object")
    package = {"atlas.json": canonical_json(dict(manifest)).encode("utf-8")}
    for path, content in (files or {}).items():
        if not isinstance(path, str) or not path or path == "atlas.json":
            raise AtlasError("/files", f"{path!r} is not a usable file path")
        if isinstance(content, str):
            package[path] = content.encode("utf-8")
        elif isinstance(content, bytes):
            package[path] = content
        else:
            raise AtlasError(json_pointer(["files", path]), "must be text")
    return package


def _encode_package(package: Mapping[str, bytes]) -> str:
    return canonical_json({path: base64.b64encode(data).decode("ascii") for path, data in package.items()})


def _decode_package(source: str) -> dict[str, bytes]:
    try:
        return {path: base64.b64decode(text, validate=True) for path, text in json.loads(source).items()}
    except (ValueError, binascii.Error, AttributeError) as exc:
        raise AtlasError("", f"the stored atlas package cannot be read: {exc}") from None


class _Counters:
    """The service's counters: they remember what the current attempt consumed, so that an
    attempt whose commit lost a race (and is run again) gives its charges back.

    Each thread remembers its own attempt's: the event loop's, and each module thread's."""

    def __init__(self, inner: CounterStore) -> None:
        self.inner = inner
        self._local = threading.local()

    def check(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        return self.inner.check(charges, now)

    def consume(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        breach = self.inner.consume(charges, now)
        if breach is None and charges:
            taken: _Consumed | None = getattr(self._local, "taken", None)
            if taken is None:
                taken = self._local.taken = []
            taken.append((tuple(charges), now))
        return breach

    def release(self, charges: Sequence[Charge], now: float) -> None:
        self.inner.release(charges, now)

    def take(self) -> _Consumed:
        """What this thread consumed since its last take (call it right after the attempt, in its thread)."""
        taken: _Consumed = getattr(self._local, "taken", None) or []
        self._local.taken = []
        return taken

    def give_back(self, taken: Sequence[tuple[tuple[Charge, ...], float]]) -> None:
        for charges, now in reversed(taken):
            try:
                self.inner.release(charges, now)
            except UnavailableError:
                _log.exception("could not give back the charges of an attempt that was not kept")


@dataclass(slots=True)
class _Turn:
    """One session's operations in this process, one at a time; dropped when nobody waits."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(slots=True)
class _Tenant:
    resolver: Resolver
    workspace: Workspace
    digests: dict[str, str]
    engines: dict[str, Engine] = field(default_factory=dict)
    #: The loaded atlases with wasm policies. While there is one, the tenant's operations run on
    #: the module threads, one at a time (``module_turn``), never on the event loop.
    module_atlases: frozenset[str] = frozenset()
    module_turn: asyncio.Lock = field(default_factory=asyncio.Lock)


class GovernanceService:
    """Sessions, resolve, execute, approvals and traces for many tenants, over a :class:`StateStore`."""

    def __init__(
        self,
        state: StateStore,
        *,
        signer: Signer,
        ledger: AuditLedger | None = None,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        counters: CounterStore | None = None,
        digests: AtlasDigests | None = None,
        executors: Mapping[str, Executor] | None = None,
        resolution_ttl_seconds: int = 3600,
        max_clock_skew_seconds: int = 300,
        atlas_refresh_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        modules: ModuleLoader | None = None,
        seal_in_background: bool = False,
        executor_threads: int = 8,
        executor_queue: int = 32,
    ) -> None:
        """``digests`` is a cache of the tenants' atlas digests shared by every process (Redis),
        invalidated when an atlas changes. Without one, this process trusts the digests it read
        for ``atlas_refresh_seconds``: an atlas loaded or unloaded through another process is
        used here within that time.

        With ``seal_in_background``, an operation answers once its events are committed, and a
        background task seals whatever has been committed into the ledger, many operations in one
        append; reads of the ledger (:meth:`flush`) seal what is pending first. Committed events
        survive a crash either way and are sealed by the next :meth:`start`.

        Executors run on ``executor_threads`` threads of their own, so slow or stuck tools never
        take the threads that sealing and ledger reads use. At most ``executor_queue`` more calls
        wait for one; past that, a call to an action with an executor is refused before anything
        is recorded (:class:`~cra.errors.Overloaded`, a 503 with ``Retry-After``).

        A module call of a ``wasm`` policy may take up to its deadline, and loading one runs its
        start function. So the work of a tenant whose atlases have ``wasm`` policies (its
        operations, evaluations, and compiling its atlases) runs on a few threads of its own, one
        piece of a tenant's work at a time, and the event loop stays free for every other request.
        Atlases without modules are decided on the event loop, in microseconds."""
        if executor_threads < 1 or executor_queue < 0:
            raise ValueError("executor_threads must be at least 1 and executor_queue at least 0")
        self.state = state
        self.ledger = ledger
        self._signer = signer
        self._clock: Clock = clock or SystemClock()
        self._ids: IdSource = ids or SystemIds()
        self._counters = _Counters(counters or MemoryCounters())
        self._executors = dict(executors or {})
        self._executor_pool = ThreadPoolExecutor(max_workers=executor_threads, thread_name_prefix="cra-executor")
        self._executor_capacity = executor_threads + executor_queue
        self._executor_calls = 0  # admitted calls whose executor runs or waits for a thread (this event loop's)
        self._module_pool = ThreadPoolExecutor(max_workers=_MODULE_THREADS, thread_name_prefix="cra-modules")
        self._modules = modules
        self._ttl = resolution_ttl_seconds
        self._skew = max_clock_skew_seconds
        self._tenants: dict[str, _Tenant] = {}
        self._shared_digests = digests
        self._atlas_refresh = atlas_refresh_seconds
        self._monotonic = monotonic
        self._digest_cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._turns: dict[str, _Turn] = {}
        self._running: set[asyncio.Future[dict[str, Any]]] = set()
        self._seal_lock = asyncio.Lock()
        self._background = seal_in_background
        self._seal_wanted = asyncio.Event()
        self._checkpoint_wanted = False
        self._sealer: asyncio.Task[None] | None = None
        self._tender: asyncio.Task[None] | None = None
        self._calls_here: set[str] = set()  # execution ids of the calls this process runs, leased to it

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Seal whatever an earlier process committed but did not seal (if the ledger can now), record
        the calls of processes that stopped as failed, and keep this process's calls leased."""
        try:
            await self.seal_pending()
        except LedgerError:
            _log.exception("the ledger cannot seal the committed events yet; they stay marked unsealed")
        await self.recover_lost_calls()
        if self._tender is None:
            self._tender = asyncio.get_running_loop().create_task(self._tend_calls(), name="cra-call-leases")

    async def recover_lost_calls(self) -> int:
        """Record every call whose process stopped before it reported an outcome (its lease ran out) as
        failed with ``executor_lost``, and release its idempotency key. Returns how many."""
        recorded = 0
        for tenant_id, call in await self.state.take_over_lost_calls():
            keys = SnapshotKeys(tenant_id, call.session_id)
            try:
                await self._operate(keys, partial(_abandon, call=call))
            except CRAError:
                _log.exception("a lost call could not be recorded as failed; it is tried again later")
                continue
            recorded += 1
        if recorded:
            _log.warning("recorded %d calls of a stopped process as failed (executor_lost)", recorded)
        return recorded

    async def _tend_calls(self) -> None:
        """Renew this process's call leases, and take over lost ones, three times per lease."""
        while True:
            await asyncio.sleep(self.state.call_lease_seconds / 3)
            try:
                await self.state.renew_calls(set(self._calls_here))
                await self.recover_lost_calls()
            except Exception:  # noqa: BLE001 - the database failing must not end the leases' upkeep
                _log.exception("the leases of running calls could not be renewed; retried")

    async def close(self) -> None:
        if self._tender is not None:
            self._tender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tender
            self._tender = None
        self._executor_pool.shutdown(wait=False, cancel_futures=True)
        self._module_pool.shutdown(wait=False, cancel_futures=True)
        if self._sealer is not None:
            self._sealer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sealer
            self._sealer = None
            try:
                await self.flush()
            except LedgerError:
                _log.exception("the ledger could not seal the last committed events; the next start will")
        await self.state.close()

    # -- tenants and atlases --------------------------------------------------

    def _new_tenant(self, tenant_id: str) -> _Tenant:
        ws = Workspace()
        resolver = Resolver(
            clock=self._clock,
            ids=self._ids,
            counters=self._counters,
            sessions=ws.sessions,
            events=ws.events,
            resolutions=ws.resolutions,
            approvals=ws.approvals,
            signer=self._signer,
            ledger=ws.ledger,
            tenant_id=tenant_id,
            modules=self._modules,
            resolution_ttl_seconds=self._ttl,
            max_clock_skew_seconds=self._skew,
        )
        for action_id, executor in self._executors.items():
            resolver.register_executor(action_id, executor)
        return _Tenant(resolver, ws, {})

    async def _digests(self, tenant_id: str) -> dict[str, str]:
        """The tenant's atlas digests as the store holds them: from the shared cache, or re-read
        at most once per refresh interval."""
        if self._shared_digests is not None:
            cached_digests = await self._shared_digests.get(tenant_id)
            if cached_digests is not None:
                return cached_digests
            stored = await self.state.atlas_digests(tenant_id)
            await self._shared_digests.put(tenant_id, stored)
            return stored
        now = self._monotonic()
        cached = self._digest_cache.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        digests = await self.state.atlas_digests(tenant_id)
        self._digest_cache[tenant_id] = (now + self._atlas_refresh, digests)
        return digests

    async def _tenant(self, tenant_id: str) -> _Tenant:
        """The tenant's resolver, with the atlases the store holds for it (as of the last refresh)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = self._new_tenant(tenant_id)
        digests = await self._digests(tenant_id)
        if digests != tenant.digests:
            records = {r.atlas_id: r for r in await self.state.atlases(tenant_id)}
            fresh = self._new_tenant(tenant_id)
            stored: list[Atlas] = []
            for atlas_id in sorted(records):
                try:
                    stored.append(parse_package(_decode_package(records[atlas_id].source)))
                except CRAError:
                    _log.exception("stored atlas %s of tenant %s no longer loads; it is left out", atlas_id, tenant_id)
            if any(map(_uses_modules, stored)):
                # Compiling instantiates the modules: each start function runs, for up to its deadline.
                await asyncio.get_running_loop().run_in_executor(
                    self._module_pool, _load_stored, fresh, tenant_id, stored
                )
            else:
                _load_stored(fresh, tenant_id, stored)
            # What the store holds, loadable or not, so that a broken atlas is not recompiled on every call.
            fresh.digests = {a: r.digest for a, r in records.items()}
            self._digest_cache[tenant_id] = (self._monotonic() + self._atlas_refresh, dict(fresh.digests))
            tenant = self._tenants[tenant_id] = fresh
        return tenant

    async def load_atlas(
        self, tenant_id: str, package: Mapping[str, bytes], *, replace: bool = False, source: str | None = None
    ) -> Atlas:
        """Validate, compile and store an atlas package for the tenant.

        :class:`ConflictError` when an atlas with its id is loaded and ``replace`` is false.
        """
        atlas = parse_package(package, source=source)
        _fits_the_store(atlas)
        tenant = await self._tenant(tenant_id)
        if not replace and atlas.atlas_id in tenant.digests:
            raise ConflictError(f"atlas {atlas.atlas_id!r} is already loaded")
        # The full load (policies, context, parameter schemas, action ownership) on a scratch resolver.
        trial = self._new_tenant(tenant_id).resolver
        others = [other for other in tenant.resolver.atlases if other.atlas_id != atlas.atlas_id]

        def compile_all() -> None:
            for other in others:
                trial.load_atlas(other)
            trial.load_atlas(atlas)

        if _uses_modules(atlas) or any(map(_uses_modules, others)):
            # Off the event loop: compiling instantiates the modules, and each start function runs.
            await asyncio.get_running_loop().run_in_executor(self._module_pool, compile_all)
        else:
            compile_all()
        record = AtlasRecord(
            tenant_id=tenant_id,
            atlas_id=atlas.atlas_id,
            version=atlas.version,
            digest=atlas.digest,
            source=_encode_package(package),
            loaded_at=format_timestamp(self._clock.now()),
        )
        await self.state.put_atlas(record, replace=replace)
        await self._changed(tenant_id)
        return atlas

    async def atlases(self, tenant_id: str) -> tuple[Atlas, ...]:
        return (await self._tenant(tenant_id)).resolver.atlases

    async def atlas(self, tenant_id: str, atlas_id: str) -> Atlas:
        for atlas in await self.atlases(tenant_id):
            if atlas.atlas_id == atlas_id:
                return atlas
        raise NotFoundError("atlas", atlas_id)

    async def unload_atlas(self, tenant_id: str, atlas_id: str) -> None:
        deleted = await self.state.delete_atlas(tenant_id, atlas_id)
        await self._changed(tenant_id)
        if not deleted:
            raise NotFoundError("atlas", atlas_id)

    async def _changed(self, tenant_id: str) -> None:
        """The tenant's atlases changed (committed): forget its digests here and in every process.

        If the shared cache cannot be told, the other processes still converge within its TTL."""
        self._digest_cache.pop(tenant_id, None)
        if self._shared_digests is None:
            return
        try:
            await self._shared_digests.invalidate(tenant_id)
        except UnavailableError:
            _log.exception("could not invalidate the shared atlas digests of tenant %s", tenant_id)

    # -- operations -----------------------------------------------------------

    async def _operate(self, keys: SnapshotKeys, op: Callable[[Resolver], _T]) -> _T:
        """Run ``op`` on a fresh snapshot, commit what it wrote, seal it; again if it lost a race.

        Operations on one session take turns within this process, so they never race each
        other; the database still referees races with other processes.
        """
        if keys.session_id is None:
            return await self._attempts(keys, op)
        async with self._turn(keys.session_id):
            return await self._attempts(keys, op)

    @asynccontextmanager
    async def _turn(self, session_id: str) -> AsyncIterator[None]:
        turn = self._turns.get(session_id)
        if turn is None:
            turn = self._turns[session_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[session_id]

    async def _attempts(self, keys: SnapshotKeys, op: Callable[[Resolver], _T]) -> _T:
        for _ in range(_RETRIES):
            tenant = await self._tenant(keys.tenant_id)
            snapshot = await self.state.snapshot(keys)
            if tenant.module_atlases:  # a module call may take up to its deadline: off the event loop
                attempt = partial(self._attempt, tenant, snapshot, op)
                outcome, changes, consumed = await self._off_loop(tenant, attempt, self._abandoned_attempt)
            else:
                outcome, changes, consumed = self._attempt(tenant, snapshot, op)
            # Once begun, a commit finishes even if the request is cancelled (a timeout, a client
            # gone): whether it was kept must not depend on when the cancellation arrived.
            committing = asyncio.ensure_future(self.state.commit(changes))
            try:
                await asyncio.shield(committing)
            except ConflictError:
                self._counters.give_back(consumed)
                await asyncio.sleep(0)
                continue
            except asyncio.CancelledError:
                committing.add_done_callback(self._committed_after_cancel(consumed))
                raise
            except BaseException:
                self._counters.give_back(consumed)
                raise
            await self._seal(changes)
            if isinstance(outcome, CRAError):
                raise outcome
            return outcome
        raise ConflictError("the operation kept losing races with other writers; try again")

    def _attempt(
        self, tenant: _Tenant, snapshot: Snapshot, op: Callable[[Resolver], _T]
    ) -> tuple[_T | CRAError, Changes, _Consumed]:
        """Run ``op`` once on ``snapshot``, all in one thread (no await can interleave another operation
        on the tenant's workspace): what it answered, or the refusal it raised, whose error.occurred
        event is committed all the same; what it wrote; what it consumed."""
        tenant.workspace.load(snapshot)
        outcome: _T | CRAError
        try:
            outcome = op(tenant.resolver)
        except CRAError as exc:
            if isinstance(exc, UnavailableError):  # a dependency could not answer: nothing is kept
                tenant.workspace.take()
                self._counters.give_back(self._counters.take())
                raise
            outcome = exc
        except BaseException:
            tenant.workspace.take()
            self._counters.give_back(self._counters.take())
            raise
        return outcome, tenant.workspace.take(), self._counters.take()

    def _abandoned_attempt(self, attempt: tuple[object, Changes, _Consumed]) -> None:
        """An attempt whose caller went away before it ended: nothing of it is committed, so its charges go back."""
        self._counters.give_back(attempt[2])

    async def _off_loop(
        self, tenant: _Tenant, work: Callable[[], _T], abandoned: Callable[[_T], None] | None = None
    ) -> _T:
        """Run ``work`` on the module threads, in the tenant's turn: one piece of a tenant's module work
        at a time, so one tenant holds at most one of the threads, and the event loop stays free.

        A caller that is cancelled does not stop ``work``, which has the tenant's workspace until it
        ends: the turn is held until then, and ``abandoned`` gets what ``work`` returned."""
        turn = tenant.module_turn
        await turn.acquire()
        try:
            running = asyncio.get_running_loop().run_in_executor(self._module_pool, work)
        except BaseException:
            turn.release()
            raise
        running.add_done_callback(lambda _: turn.release())
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            if abandoned is not None:
                running.add_done_callback(partial(_hand_over, abandoned))
            raise

    def _committed_after_cancel(self, consumed: _Consumed) -> Callable[[asyncio.Future[None]], None]:
        """What to do when a commit whose request was cancelled ends: give back if it was not kept."""

        def done(commit: asyncio.Future[None]) -> None:
            if commit.cancelled() or commit.exception() is not None:
                self._counters.give_back(consumed)

        return done

    async def _seal(self, changes: Changes) -> None:
        if self.ledger is None or not changes.events:
            return
        if self._background:
            self._checkpoint_wanted = self._checkpoint_wanted or changes.checkpoint
            self._seal_wanted.set()
            if self._sealer is None or self._sealer.done():
                self._sealer = asyncio.get_running_loop().create_task(self._seal_forever(), name="cra-sealer")
            return
        try:
            await self.seal_pending()
            if changes.checkpoint:
                async with self._seal_lock:
                    await asyncio.to_thread(self.ledger.checkpoint)
        except (CRAError, OSError):
            _log.exception("the ledger could not seal committed events; they stay marked unsealed")

    async def _seal_forever(self) -> None:
        """The background sealer: whenever something was committed, seal all of it."""
        while True:
            await self._seal_wanted.wait()
            self._seal_wanted.clear()
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the ledger or the state store failing must not end the sealer
                _log.exception("committed events could not be sealed; they stay marked unsealed and are retried")
                await asyncio.sleep(1.0)  # retried, not spun on
                self._seal_wanted.set()

    async def flush(self) -> None:
        """Seal everything committed so far (and the checkpoint an operation asked for).
        Reads of the ledger call this first, so they see every operation that has answered."""
        if self.ledger is None:
            return
        await self.seal_pending()
        async with self._seal_lock:  # a checkpoint being signed by the sealer is waited for, not skipped
            if self._checkpoint_wanted:
                self._checkpoint_wanted = False
                await asyncio.to_thread(self.ledger.checkpoint)

    async def seal_pending(self) -> int:
        """Seal every committed, unsealed event into the ledger, in insertion order (which keeps
        each chain in order). Returns how many."""
        if self.ledger is None:
            return 0
        ledger = self.ledger
        sealed = 0
        async with self._seal_lock:
            while True:
                batch = await self.state.unsealed()
                if not batch:
                    return sealed
                entries = [entry for _, entry, _ in batch]
                claims: list[AttestationClaim] = [claim for _, _, claim in batch if claim is not None]
                try:
                    await asyncio.to_thread(ledger.append_entries, entries, claims)
                except (CRAError, OSError) as exc:
                    raise LedgerError(f"the ledger could not seal {len(entries)} committed events: {exc}") from exc
                await self.state.mark_sealed([row_id for row_id, _, _ in batch])
                sealed += len(batch)

    async def create_session(
        self,
        tenant_id: str,
        *,
        agent_id: str,
        goal: str,
        roles: Sequence[str] = (),
        atlas_ids: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        created: list[str] = []

        def op(r: Resolver) -> None:
            created.append(
                r.create_session(
                    agent_id, goal, roles=roles, tenant_id=tenant_id, atlas_ids=atlas_ids, metadata=metadata
                )
            )

        await self._operate(SnapshotKeys(tenant_id), op)
        return await self.session(tenant_id, created[0])

    async def session(self, tenant_id: str, session_id: str) -> Session:
        session = await self.state.session(tenant_id, session_id)
        if session is None:
            raise NotFoundError("session", session_id)
        return session

    async def end_session(self, tenant_id: str, session_id: str, reason: str = "completed") -> Session:
        await self.session(tenant_id, session_id)
        await self._operate(
            SnapshotKeys(tenant_id, session_id, whole_chain=True), lambda r: r.end_session(session_id, reason)
        )
        return await self.session(tenant_id, session_id)

    async def resolve(self, tenant_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        req = _carp(request)
        await self.session(tenant_id, req.session_id)
        keys = SnapshotKeys(tenant_id, req.session_id, request_id=req.request_id)
        return await self._operate(keys, lambda r: r.resolve(req))

    async def execute(
        self,
        tenant_id: str,
        request: Mapping[str, Any],
        *,
        approval_ticket: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Authorise a call (committed), run its executor once in a thread, then record the outcome.

        Only the two recording steps are retried when they lose a race; the executor runs
        exactly once. Once it has started, the call runs to its recorded end even if the
        client goes away or the request times out.
        """
        req = _carp(request)
        if req.execution is None:
            raise ProtocolError("/execution", "an execute request needs an execution")
        await self.session(tenant_id, req.session_id)
        keys = SnapshotKeys(
            tenant_id,
            req.session_id,
            resolution_id=req.execution.resolution_id,
            request_id=req.request_id,
            idempotency_key=req.execution.idempotency_key,
        )
        executor: object = self._executors.get(req.execution.action_id)
        admitted = executor is not None
        if isinstance(executor, Warming) and (why := executor.warming()) is not None:
            raise SandboxBuilding(f"{why}; nothing of this call was recorded", retry_after=_WARMING_RETRY_S)
        if admitted:
            if self._executor_calls >= self._executor_capacity:
                raise Overloaded(
                    f"{self._executor_calls} calls are running or waiting for an executor, the most this "
                    "process takes; nothing of this call was recorded"
                )
            self._executor_calls += 1
        try:
            started = await self._operate(
                keys, lambda r: r.begin_execute(req, approval_ticket=approval_ticket, requested_by=requested_by)
            )
        except BaseException:
            self._executor_calls -= admitted
            raise
        if not isinstance(started, PendingCall):
            self._executor_calls -= admitted
            return started
        finish = SnapshotKeys(tenant_id, req.session_id, idempotency_key=req.execution.idempotency_key)
        self._calls_here.add(started.execution_id)

        async def run_and_record() -> dict[str, Any]:
            try:
                try:
                    outcome = await asyncio.get_running_loop().run_in_executor(self._executor_pool, started.run)
                except BaseException as exc:
                    aborted = Outcome(0, error_code="executor_aborted", error_message=type(exc).__name__)
                    await self._operate(finish, lambda r: r.finish_execute(started, aborted))
                    raise
                finally:
                    self._executor_calls -= admitted
                return await self._operate(finish, lambda r: r.finish_execute(started, outcome))
            finally:
                # Recorded or not, this process no longer runs the call: a call whose outcome could
                # not be recorded is no longer renewed, and is recorded as lost when its lease runs out.
                self._calls_here.discard(started.execution_id)

        task = asyncio.ensure_future(run_and_record())
        self._running.add(task)
        task.add_done_callback(self._ran)
        return await asyncio.shield(task)

    @property
    def executor_calls(self) -> int:
        """Calls admitted in this process whose executor runs or waits for a thread now."""
        return self._executor_calls

    def _ran(self, task: asyncio.Future[dict[str, Any]]) -> None:
        """A call that ran on after its request was gone: keep no reference, and log its failure."""
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("recording a call's outcome failed: %s", type(task.exception()).__name__)

    async def approval(self, tenant_id: str, approval_id: str) -> Approval:
        approval = await self.state.approval(tenant_id, approval_id)
        if approval is None:
            raise NotFoundError("approval", approval_id)
        return approval

    async def approve(
        self, tenant_id: str, approval_id: str, *, approver: str, approver_roles: Sequence[str], comment: str | None
    ) -> ApprovalTicket:
        approval = await self.approval(tenant_id, approval_id)
        keys = SnapshotKeys(tenant_id, approval.session_id)
        return await self._operate(
            keys, lambda r: r.approve(approval_id, approver=approver, approver_roles=approver_roles, comment=comment)
        )

    async def deny(
        self, tenant_id: str, approval_id: str, *, approver: str, approver_roles: Sequence[str], comment: str | None
    ) -> Approval:
        approval = await self.approval(tenant_id, approval_id)
        keys = SnapshotKeys(tenant_id, approval.session_id)
        return await self._operate(
            keys, lambda r: r.deny(approval_id, approver=approver, approver_roles=approver_roles, comment=comment)
        )

    async def evaluate(
        self,
        tenant_id: str,
        *,
        action: str,
        agent: str,
        roles: Sequence[str],
        risk_tier: str | None = None,
        params: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        atlas_id: str | None = None,
    ) -> tuple[Atlas, Decision]:
        """One decision for one proposed call: a query, so nothing is consumed or recorded.

        The atlas is ``atlas_id``, else the one that declares the action, else the
        first loaded (which denies an action it does not declare).
        """
        tenant = await self._tenant(tenant_id)
        atlases = sorted(tenant.resolver.atlases, key=lambda a: a.atlas_id)
        if atlas_id is not None:
            atlases = [a for a in atlases if a.atlas_id == atlas_id]
            if not atlases:
                raise NotFoundError("atlas", atlas_id)
        if not atlases:
            raise NotFoundError("atlas", "(none is loaded)")
        atlas = next((a for a in atlases if a.action(action) is not None), atlases[0])
        if atlas.atlas_id in tenant.module_atlases:
            # Off the event loop: a module call may take up to its deadline, and building the
            # engine instantiates the modules.
            def decide() -> Decision:
                engine = self._engine(tenant, tenant_id, atlas)
                return engine.evaluate(action, agent, roles, risk_tier, params, context, dry_run=True)

            return atlas, await self._off_loop(tenant, decide)
        engine = self._engine(tenant, tenant_id, atlas)
        decision = engine.evaluate(action, agent, roles, risk_tier, params, context, dry_run=True)
        return atlas, decision

    def _engine(self, tenant: _Tenant, tenant_id: str, atlas: Atlas) -> Engine:
        """The engine that evaluates for ``atlas``, built on first use."""
        engine = tenant.engines.get(atlas.atlas_id)
        if engine is None:
            engine = Engine(
                atlas, counters=self._counters, clock=self._clock, tenant_id=tenant_id, modules=self._modules
            )
            tenant.engines[atlas.atlas_id] = engine
        return engine

    async def attach_evidence(
        self,
        tenant_id: str,
        session_id: str,
        *,
        sha256: str,
        media_type: str,
        description: str,
        attached_by: str,
        size_bytes: int | None = None,
    ) -> TraceEvent:
        """Record external evidence in a session's trace (see :meth:`Resolver.attach_evidence`)."""
        await self.session(tenant_id, session_id)
        return await self._operate(
            SnapshotKeys(tenant_id, session_id),
            lambda r: r.attach_evidence(
                session_id,
                sha256=sha256,
                media_type=media_type,
                description=description,
                attached_by=attached_by,
                size_bytes=size_bytes,
            ),
        )

    async def decisions(self, query: DecisionQuery) -> tuple[list[DecisionRecord], int]:
        """Recorded decisions with their attestation ids, filtered, oldest first."""
        if self._background:
            try:
                await self.flush()  # so that every decision that has answered carries its attestation
            except LedgerError:
                _log.exception("the ledger could not seal committed events; they are listed unsealed")
        return await self.state.decisions(query)

    # -- reads ----------------------------------------------------------------

    async def sessions(
        self,
        tenant_id: str,
        *,
        agent_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Session], int]:
        """A page of the tenant's sessions, newest first, and how many match."""
        return await self.state.sessions(tenant_id, agent_id=agent_id, status=status, limit=limit, offset=offset)

    async def approvals(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        action_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Approval], int]:
        """A page of the tenant's approvals, filtered, and how many match."""
        return await self.state.approvals(
            tenant_id,
            status=status,
            session_id=session_id,
            agent_id=agent_id,
            action_id=action_id,
            limit=limit,
            offset=offset,
        )

    async def report_rows(
        self, tenant_id: str, *, since: str | None = None, until: str | None = None, limit: int | None = None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The decision and approval rows the reports are built from, within the time range."""
        return await self.state.report_rows(tenant_id, since=since, until=until, limit=limit)

    async def events_after(self, tenant_id: str, session_id: str, sequence: int | None, limit: int) -> list[TraceEvent]:
        """Up to ``limit`` of a session's events after ``sequence`` (from the first if None), for a reader
        that has checked the session."""
        return await self.state.events(tenant_id, session_id, since_sequence=sequence, limit=limit)

    async def trace(
        self,
        tenant_id: str,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        await self.session(tenant_id, session_id)
        return await self.state.events(
            tenant_id, session_id, event_type=event_type, since_sequence=since_sequence, limit=limit
        )

    async def verify_trace(self, tenant_id: str, session_id: str) -> ChainReport:
        return check_chain(await self.trace(tenant_id, session_id))


def _uses_modules(atlas: Atlas) -> bool:
    """Whether deciding for the atlas calls WebAssembly modules (it has a ``wasm`` policy)."""
    return any(policy.type == "wasm" for policy in atlas.policies)


def _load_stored(tenant: _Tenant, tenant_id: str, atlases: Sequence[Atlas]) -> None:
    """Compile a tenant's stored atlases into its resolver, leaving out (and logging) any that no longer load."""
    for atlas in atlases:
        try:
            tenant.resolver.load_atlas(atlas)
        except CRAError:
            _log.exception("stored atlas %s of tenant %s no longer loads; it is left out", atlas.atlas_id, tenant_id)
    tenant.module_atlases = frozenset(a.atlas_id for a in tenant.resolver.atlases if _uses_modules(a))


def _hand_over(abandoned: Callable[[_T], None], done: asyncio.Future[_T]) -> None:
    """Give ``abandoned`` what work nobody waited for returned (nothing if it failed or never ran)."""
    if not done.cancelled() and done.exception() is None:
        abandoned(done.result())


def _fits_the_store(atlas: Atlas) -> None:
    """Ids the store keeps in columns must fit them (PostgreSQL refuses longer values)."""
    if len(atlas.atlas_id) > 255:
        raise AtlasError("/atlas_id", "must be at most 255 characters")
    if len(atlas.version) > 64:
        raise AtlasError("/version", "must be at most 64 characters")
    too_long = [
        (f"/policies/{i}/policy_id", p.policy_id) for i, p in enumerate(atlas.policies) if len(p.policy_id) > 255
    ] + [(f"/actions/{i}/action_id", a.action_id) for i, a in enumerate(atlas.actions) if len(a.action_id) > 255]
    if too_long:
        raise atlas.locate(AtlasError(too_long[0][0], "must be at most 255 characters"))


def _carp(request: Mapping[str, Any]) -> CarpRequest:
    return parse_carp_request(request)


def _abandon(r: Resolver, *, call: RunningCall) -> None:
    r.abandon_call(call, _LOST_CALL)
