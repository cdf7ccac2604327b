"""``cra serve`` and ``cra apikey`` as real processes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.e2e._process import cra, free_port, pump, serve_command

STARTUP_SECONDS = 30.0


class Server:
    """``cra serve`` in a subprocess, its stdout read line by line."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log
        self._log = log.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(  # noqa: S603 - the project's own command line
            serve_command(data_dir, self.port),
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=pump, args=(self.process.stdout, self.lines), daemon=True)
        self._reader.start()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"cra serve exited early:\n{self.stderr()}"
            try:
                r = httpx.get(f"{self.url}/v1/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if r.status_code == 200:
                assert r.json()["status"] == "healthy"
                return
            time.sleep(0.2)
        raise AssertionError(f"cra serve did not come up in {STARTUP_SECONDS} s:\n{self.stderr()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise
        finally:
            self._reader.join(timeout=10)
            self._log.close()
        return code

    def stopped_cleanly(self, code: int) -> bool:
        """Exit 0, or uvicorn's re-raised SIGTERM after a complete graceful shutdown."""
        return code == 0 or (code == -signal.SIGTERM and "Application shutdown complete" in self.stderr())

    def stdout(self) -> list[str]:
        out = []
        while not self.lines.empty():
            out.append(self.lines.get_nowait())
        return out

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self._log_path.read_text()


@pytest.mark.slow
def test_serve_prints_an_admin_key_once_and_serves_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Server(data, tmp_path / "first.log")
    try:
        first.wait_healthy()
        key = ""
        deadline = time.monotonic() + 10
        while not key and time.monotonic() < deadline:
            try:
                line = first.lines.get(timeout=1).strip()
            except queue.Empty:
                continue
            if line.startswith("cra_"):
                key = line
        assert key, f"no admin key on stdout:\n{first.stderr()}"
        with httpx.Client(base_url=first.url, headers={"X-API-Key": key}, timeout=10) as client:
            r = client.get("/v1/atlases")
            assert r.status_code == 200, r.text
            ids = {a["atlas_id"] for a in r.json()["items"]}
            assert "com.cra.examples.customer-support" in ids  # the demo atlases, in tenant default
            r = client.post("/v1/sessions", json={"agent_id": "support-bot", "goal": "Help a customer"})
            assert r.status_code == 201, r.text
            session_id = r.json()["session_id"]
            r = client.get("/v1/sessions", headers={"X-API-Key": "cra_0_nope"})
            assert r.status_code == 401
            assert r.headers["content-type"].startswith("application/problem+json")
    finally:
        code = first.stop()
    assert first.stopped_cleanly(code), first.stderr()

    second = Server(data, tmp_path / "second.log")
    try:
        second.wait_healthy()
        with httpx.Client(base_url=second.url, headers={"X-API-Key": key}, timeout=10) as client:
            r = client.get(f"/v1/sessions/{session_id}")
            assert r.status_code == 200, r.text
            assert r.json()["agent_id"] == "support-bot"
    finally:
        code = second.stop()
    assert second.stopped_cleanly(code), second.stderr()
    assert not [line for line in second.stdout() if "cra_" in line]


@pytest.mark.slow
def test_apikey_create_list_revoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = cra("apikey", "create", "--tenant", "t", "--role", "agent", "--agent", "a", "--json", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    token = record["key"]
    assert token.startswith(f"cra_{record['key_id']}_")
    assert record["role"] == "agent"
    assert record["agent_id"] == "a"
    assert record["tenant_id"] == "t"
    assert record["policy_roles"] == ["agent"]
    secret = token.split("_", 2)[2]

    listed = cra("apikey", "list", "--json", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert [k["key_id"] for k in keys] == [record["key_id"]]
    assert keys[0]["revoked_at"] is None
    assert "key" not in keys[0]
    assert "secret_hash" not in keys[0]
    assert secret not in listed.stdout

    bad = cra("apikey", "create", "--tenant", "t", "--role", "agent", "--json", "--data-dir", data)
    assert bad.returncode != 0  # an agent key needs its agent

    revoked = cra("apikey", "revoke", record["key_id"], "--data-dir", data)
    assert revoked.returncode == 0, revoked.stderr
    keys = json.loads(cra("apikey", "list", "--json", "--data-dir", data).stdout)
    assert keys[0]["revoked_at"] is not None
    again = cra("apikey", "revoke", record["key_id"], "--data-dir", data)
    assert again.returncode == 1
    unknown = cra("apikey", "revoke", "0123456789abcdef", "--data-dir", data)
    assert unknown.returncode == 1
