"""The `livora` command as a person uses it: migrate, create-admin, run, openapi."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from livora.cli import main

LIVORA = [sys.executable, "-m", "livora"]


def _env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVORA_")}
    env.update(
        LIVORA_DATABASE_URL=database_url,
        LIVORA_DATA_DIR=str(tmp_path / "var"),
        LIVORA_ARGON2_TIME_COST="1",
        LIVORA_ARGON2_MEMORY_KIB="1024",
        LIVORA_COOKIE_SECURE="false",
        LIVORA_CELL_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def livora(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIVORA, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Running:
    """`livora run` in a subprocess, read until its banner is out."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*LIVORA, "run", "--port", str(self.port), *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.banner = ""
        deadline = time.monotonic() + 60
        while "Livora control plane on" not in self.banner or not self._healthy():
            assert self.process.poll() is None, self.process.communicate()
            assert time.monotonic() < deadline, self.banner
            if "Livora control plane on" not in self.banner:
                self.banner += self.process.stdout.readline()  # type: ignore[union-attr]
            else:
                time.sleep(0.05)
        # The rest of the banner follows the first line at once.
        while "Press Ctrl+C to stop." not in self.banner:
            self.banner += self.process.stdout.readline()  # type: ignore[union-attr]

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> str:
        self.process.terminate()
        _, stderr = self.process.communicate(timeout=30)
        return stderr


@pytest.mark.parametrize("command", [[], ["run"], ["cell"], ["migrate"], ["create-admin"], ["openapi"]])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0 and "usage: livora" in capsys.readouterr().out


def test_first_run_creates_a_bootstrap_admin_and_logs_json(database_url, tmp_path):
    env = _env(database_url, tmp_path)
    server = Running(env)
    try:
        match = re.search(r"email:\s+(\S+)\n\s+password:\s+(\S+)", server.banner)
        assert match, server.banner
        assert f"API:      {server.url}/api/v1" in server.banner
        cell_url = re.search(r"built-in cell\): (\S+)/v1/batch", server.banner).group(1)  # type: ignore[union-attr]
        assert httpx.get(f"{cell_url}/health").json() == {"status": "ok"}
        email, password = match.groups()
        login = httpx.post(f"{server.url}/api/v1/auth/login", json={"email": email, "password": password})
        assert login.status_code == 200 and login.json()["user"]["platform_role"] == "ops_admin"
        token = login.json()["token"]
        tenant = httpx.post(
            f"{server.url}/api/v1/tenants", json={"name": "From the CLI"}, headers={"Authorization": f"Bearer {token}"}
        ).json()
        httpx.get(
            f"{server.url}/api/v1/tenants/{tenant['id']}",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "cli-log-1"},
        )
    finally:
        stderr = server.stop()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [logged] = [line for line in lines if line.get("request_id") == "cli-log-1"]
    assert logged["event"] == "request" and logged["status"] == 200
    assert logged["tenant_id"] == tenant["id"] and logged["principal"].startswith("user:usr_")
    # A second start finds the admin and prints no password.
    server = Running(env)
    try:
        assert "password:" not in server.banner and "create-admin" in server.banner
    finally:
        server.stop()


def test_migrate_and_create_admin(database_url, tmp_path):
    env = _env(database_url, tmp_path)
    migrated = livora("migrate", env=env)
    assert migrated.returncode == 0 and "latest schema" in migrated.stdout
    created = livora("create-admin", "--email", "Root@Example.com", env=env)
    assert created.returncode == 0, created.stderr
    password = re.search(r"Password: (\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    reset = livora(
        "create-admin", "--email", "root@example.com", "--password-stdin", env=env, stdin="a chosen password\n"
    )
    assert reset.returncode == 0 and "Password:" not in reset.stdout
    weak = livora("create-admin", "--email", "root@example.com", "--password-stdin", env=env, stdin="short\n")
    assert weak.returncode == 1 and "at least 12 characters" in weak.stderr
    server = Running(env)
    try:
        bad = httpx.post(f"{server.url}/api/v1/auth/login", json={"email": "root@example.com", "password": password})
        assert bad.status_code == 401
        good = httpx.post(
            f"{server.url}/api/v1/auth/login", json={"email": "root@example.com", "password": "a chosen password"}
        )
        assert good.status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LIVORA_PORT", "eighty"), ("LIVORA_MAIL_DRIVER", "pigeon"), ("LIVORA_DATABASE_URL", "mysql://x@y/z")],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(tmp_path, variable, value):
    env = _env("sqlite:///" + str(tmp_path / "x.db"), tmp_path, **{variable: value})
    result = livora("run", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"livora: configuration error: {variable}: ")


def test_openapi_check_detects_a_stale_file(tmp_path, capsys):
    assert main(["openapi", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["control-plane.json", "data-plane.json"]
    assert main(["openapi", "--check", "--dir", str(tmp_path)]) == 0
    target = tmp_path / "data-plane.json"
    target.write_text(target.read_text().replace("Livora data-plane cell", "Stale"))
    assert main(["openapi", "--check", "--dir", str(tmp_path)]) == 1
    assert "livora openapi" in capsys.readouterr().err


def _burst(cell_url: str, write_key: str, requests: int) -> list[int]:
    """``requests`` batches of 100 at once, each on its own connection (so both processes get some)."""
    import asyncio
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}

    async def one(i: int) -> int:
        async with httpx.AsyncClient(timeout=30) as client:
            batch = [{"type": "track", "event": "Tick", "userId": f"u{i}-{j}"} for j in range(100)]
            return (await client.post(f"{cell_url}/v1/batch", json={"batch": batch}, headers=auth)).status_code

    async def run() -> list[int]:
        return list(await asyncio.gather(*(one(i) for i in range(requests))))

    return asyncio.run(run())


def test_run_with_two_ingest_processes_keeps_one_limit_per_tenant(database_url, tmp_path):
    env = _env(database_url, tmp_path, LIVORA_CELL_SECRET="a-cell-secret-for-this-test", LIVORA_LOG_LEVEL="warning")
    server = Running(env, "--workers", "2")
    try:
        cell_url = re.search(r"built-in cell\): (\S+)/v1/batch", server.banner).group(1)  # type: ignore[union-attr]
        email, password = re.search(r"email:\s+(\S+)\n\s+password:\s+(\S+)", server.banner).groups()  # type: ignore[union-attr]
        token = httpx.post(f"{server.url}/api/v1/auth/login", json={"email": email, "password": password}).json()[
            "token"
        ]
        ops = {"Authorization": f"Bearer {token}"}
        tenant = httpx.post(f"{server.url}/api/v1/tenants", json={"name": "Two processes"}, headers=ops).json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/api/v1/tenants/{tenant['id']}", headers=ops).json()["status"] != "active":
            assert time.monotonic() < deadline, "the tenant was never provisioned"
            time.sleep(0.1)
        key = httpx.post(
            f"{server.url}/api/v1/tenants/{tenant['id']}/sources", json={"name": "s", "kind": "server"}, headers=ops
        ).json()["write_key"]
        # The cell's processes start beside the control plane and pull the config every second:
        # wait until they answer and know the key.
        while True:
            try:
                if _burst(cell_url, key, 1) == [202]:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the cell never learnt the write key"
            time.sleep(0.2)
        time.sleep(5.5)  # the free plan's bucket (1,000 events, 200/s) is full again
        codes = _burst(cell_url, key, 20)
    finally:
        server.stop()
    # One bucket for both processes: the burst (10 batches) and what refilled meanwhile, never 2 x 10.
    assert 10 <= codes.count(202) <= 12 and codes.count(202) + codes.count(429) == 20, codes


def test_more_ingest_processes_need_a_cell_secret_and_a_cell_its_control_plane(tmp_path):
    env = _env("sqlite:///" + str(tmp_path / "x.db"), tmp_path)
    run = livora("run", "--workers", "2", env=env)
    assert run.returncode == 2 and "LIVORA_CELL_SECRET" in run.stderr
    cell = livora("cell", env=env)
    assert cell.returncode == 2 and "LIVORA_CONTROL_PLANE_URL" in cell.stderr
    cell = livora("cell", env={**env, "LIVORA_CONTROL_PLANE_URL": "http://127.0.0.1:9"})
    assert cell.returncode == 2 and "LIVORA_CELL_SECRET" in cell.stderr
