"""``cra serve`` killed with SIGKILL under load, restarted on the same data directory, three times.

Concurrent clients, each in a session of its own, resolve and attach evidence;
every request that got a 2xx answer is acknowledged and is recorded. After about
three seconds of traffic the server process is killed outright (no shutdown runs),
then started again on the same data directory and port. Then, for every session:

- every acknowledged resolution and evidence event is in the session's trace;
- the trace's hash chain verifies, on the server and here with ``verify_chain``;
- the session goes on: one more resolve succeeds.

At the end the server is stopped cleanly and the data directory's audit ledger is
opened directly: it audits, and every event of every session is in it exactly once
(the server seals committed but unsealed events when it starts).
"""

from __future__ import annotations

import asyncio
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.e2e._process import free_port, pump, serve_command
from tests.e2e._service import SUPPORT_ID, carp

from cra.store.datadir import open_ledger
from cra.trace.chain import verify_chain
from cra.trace.event import TraceEvent
from cra.trace.jsonl import loads_trace

pytestmark = pytest.mark.slow

CLIENTS = 6
TRAFFIC_SECONDS = 3.0
ROUNDS = 3
STARTUP_SECONDS = 45.0
EXIT_SECONDS = 20.0
REQUEST_SECONDS = 15.0
NDJSON = "application/x-ndjson"


class Serve:
    """One ``cra serve`` process: the Python interpreter itself, not a shell or a wrapper script."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        log: Path,
        *,
        args: Sequence[str] = (),
        sandbox: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log_path = log
        self._log = log.open("w")
        command = serve_command(data_dir, port)
        if sandbox:
            command.remove("--no-sandbox")
        self.process = subprocess.Popen(  # noqa: S603 - the project's own command line
            [*command, "--key-rate", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        assert self.process.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=pump, args=(self.process.stdout, self.lines), daemon=True)
        self._reader.start()

    async def healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"cra serve exited early:\n{self.stderr()}"
                try:
                    r = await client.get(f"{self.url}/v1/health")
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
                    continue
                if r.status_code == 200 and r.json()["status"] == "healthy":
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"cra serve did not come up in {STARTUP_SECONDS} s:\n{self.stderr()}")

    def admin_key(self) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5).strip()
            except queue.Empty:
                continue
            if line.startswith("cra_"):
                return line
        raise AssertionError(f"no admin key on stdout:\n{self.stderr()}")

    def kill(self) -> None:
        """SIGKILL the server's own process: no handler, no shutdown, no flush."""
        cmdline = Path(f"/proc/{self.process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in cmdline, cmdline  # the interpreter running `cra serve`, not a wrapper
        os.kill(self.process.pid, signal.SIGKILL)
        assert self.process.wait(timeout=EXIT_SECONDS) == -signal.SIGKILL
        self._close()

    def stop(self) -> int:
        """SIGTERM, and uvicorn's graceful shutdown; SIGKILL if it does not finish in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=EXIT_SECONDS)
            raise
        finally:
            self._close()

    def stopped_cleanly(self, code: int) -> bool:
        return code == 0 or (code == -signal.SIGTERM and "Application shutdown complete" in self.stderr())

    def _close(self) -> None:
        self._reader.join(timeout=10)
        if not self._log.closed:
            self._log.close()

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self._log_path.read_text()


@asynccontextmanager
async def servers() -> AsyncIterator[list[Serve]]:
    """The servers a scenario starts; whatever happens, none of their processes is left running."""
    started: list[Serve] = []
    try:
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=EXIT_SECONDS)
            server._close()


@dataclass
class Session:
    session_id: str
    agent_id: str
    resolutions: set[str] = field(default_factory=set)  # acknowledged resolution ids
    evidence: dict[str, str] = field(default_factory=dict)  # acknowledged evidence event id -> sha256


@dataclass
class Traffic:
    sessions: list[Session] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # non-2xx answers while the server was up
    transport_errors: int = 0


async def _create(client: httpx.AsyncClient, agent: str) -> Session:
    r = await client.post("/v1/sessions", json={"agent_id": agent, "goal": "Help a customer", "atlas_id": SUPPORT_ID})
    assert r.status_code == 201, r.text
    return Session(r.json()["session_id"], agent)


async def _resolve(client: httpx.AsyncClient, session: Session) -> httpx.Response:
    r = await client.post("/v1/resolve", json=carp(session.agent_id, session.session_id))
    if r.status_code == 200:
        session.resolutions.add(r.json()["resolution_id"])
    return r


async def _attach(client: httpx.AsyncClient, session: Session) -> httpx.Response:
    sha256 = secrets.token_hex(32)
    body = {
        "session_id": session.session_id,
        "sha256": sha256,
        "media_type": "application/octet-stream",
        "description": "a call recording",
        "size_bytes": 1024,
    }
    r = await client.post("/v1/evidence", json=body)
    if r.status_code == 201:
        session.evidence[r.json()["event_id"]] = sha256
    return r


async def _client(url: str, key: str, agent: str, traffic: Traffic, stop: asyncio.Event) -> None:
    """One session's traffic until ``stop`` or until the server is gone."""
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=REQUEST_SECONDS) as client:
        session = await _create(client, agent)
        traffic.sessions.append(session)
        while not stop.is_set():
            try:
                for step in (_resolve, _attach):
                    r = await step(client, session)
                    if not r.is_success:
                        traffic.refused.append(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
            except httpx.TransportError:
                traffic.transport_errors += 1
                return  # killed under our feet: the request in flight was never acknowledged


async def _trace(client: httpx.AsyncClient, session_id: str) -> tuple[str, list[TraceEvent]]:
    """The whole trace as NDJSON (page by page) and parsed."""
    text, since = "", None
    while True:
        params: dict[str, int] = {"limit": 1000}
        if since is not None:
            params["since_sequence"] = since
        r = await client.get(f"/v1/traces/{session_id}", params=params, headers={"Accept": NDJSON})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(NDJSON)
        page = loads_trace(r.text)
        text += r.text
        if len(page) < 1000:
            return text, loads_trace(text)
        since = page[-1].sequence


async def _check_session(client: httpx.AsyncClient, session: Session) -> list[TraceEvent]:
    text, events = await _trace(client, session.session_id)
    verify_chain(loads_trace(text))
    resolved = {e.payload["resolution_id"] for e in events if e.event_type == "carp.resolution.completed"}
    missing = session.resolutions - resolved
    assert not missing, f"{session.session_id}: acknowledged resolutions lost: {sorted(missing)}"
    by_id = {e.event_id: e for e in events}
    lost = set(session.evidence) - set(by_id)
    assert not lost, f"{session.session_id}: acknowledged evidence lost: {sorted(lost)}"
    for event_id, sha256 in session.evidence.items():
        assert by_id[event_id].payload["evidence"]["sha256"] == sha256, by_id[event_id].payload
    r = await client.post(f"/v1/traces/{session.session_id}/verify")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report == {"valid": True, "event_count": len(events), "errors": []}, report
    assert [e.sequence for e in events] == list(range(events[0].sequence, events[0].sequence + len(events)))
    return events


async def _scenario(data_dir: Path, logs: Path) -> dict[str, list[TraceEvent]]:
    port = free_port()
    traffic = Traffic()
    async with servers() as started:
        server = Serve(data_dir, port, logs / "serve-0.log")
        started.append(server)
        await server.healthy()
        key = server.admin_key()
        for round_ in range(1, ROUNDS + 1):
            stop = asyncio.Event()
            before = len(traffic.sessions)
            agents = [f"crash-agent-{round_}-{i}" for i in range(CLIENTS)]
            tasks = [asyncio.create_task(_client(server.url, key, a, traffic, stop)) for a in agents]
            await asyncio.sleep(TRAFFIC_SECONDS)
            server.kill()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=REQUEST_SECONDS + 5)
            assert len(traffic.sessions) == before + CLIENTS
            assert not traffic.refused, "\n".join(traffic.refused[:10])
            acknowledged = sum(len(s.resolutions) + len(s.evidence) for s in traffic.sessions[before:])
            assert acknowledged >= CLIENTS, f"round {round_}: only {acknowledged} requests got through"
            print(f"round {round_}: {acknowledged} acknowledged, {traffic.transport_errors} cut off so far")

            server = Serve(data_dir, port, logs / f"serve-{round_}.log")
            started.append(server)
            await server.healthy()
            async with httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": key}, timeout=30) as client:
                for session in traffic.sessions:
                    await _check_session(client, session)
                    r = await _resolve(client, session)
                    assert r.status_code == 200, f"{session.session_id} cannot go on after the restart: {r.text}"
        async with httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": key}, timeout=30) as client:
            traces = {s.session_id: await _check_session(client, s) for s in traffic.sessions}
        code = server.stop()
        assert server.stopped_cleanly(code), server.stderr()
    assert traffic.transport_errors >= 1  # the kills did land mid-traffic
    return traces


def test_acknowledged_work_survives_sigkill_and_the_ledger_catches_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    traces = asyncio.run(_scenario(data_dir, tmp_path))
    assert len(traces) == ROUNDS * CLIENTS

    ledger = open_ledger(data_dir)
    try:
        ledger.audit()
        events = [e for trace in traces.values() for e in trace]
        indexes = [ledger.index_of(e.event_id) for e in events]
        assert len(set(indexes)) == len(events), "an event is in the ledger more than once"
        assert ledger.size == len(events), f"the ledger has {ledger.size} entries for {len(events)} events"
        print(f"{len(events)} events in {len(traces)} sessions, all in the ledger once")
    finally:
        ledger.close()
