"""Fixtures: the local target site, real daphne servers, and the machine's Redis and PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port, reachable, wait_for_port
from tests.target import TargetServer

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.getenv("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.getenv("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.getenv("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def need_service(name: str, host: str, port: int) -> None:
    """Skips when a service is down; under CI=true, fails instead."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: tests may not skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def target() -> Iterator[TargetServer]:
    server = TargetServer("127.0.0.1").start()
    yield server
    server.stop()


class Server:
    """A real daphne process serving the project, and the environment it runs with."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = [str(ROOT / ".venv/bin/daphne"), "-b", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "scraperproj.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def project_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a real process of the project runs with in tests."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "scraperproj.settings",
        "SECRET_KEY": "tests-only-secret-key-" + "x" * 40,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SCANS_ALLOWED_NETWORKS": "127.0.0.1/32",
        "SCANS_ALLOWED_PORTS": "*",
        "DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


def django_code(env: dict[str, str], code: str, *args: object, timeout_s: float = 60) -> str:
    """Runs ``code`` in a fresh Django process with ``env``; returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daphne with the embedded worker: SQLite and the in-memory layer, as `make run`."""
    tmp_path = tmp_path_factory.mktemp("server")
    env = project_env(tmp_path)
    migrate(env)
    server = Server(env, tmp_path / "daphne.log").start()
    yield server
    server.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Starts daphne processes with extra environment; stops them after the test."""
    started: list[Server] = []

    def make(env: dict[str, str] | None = None, **extra: str) -> Server:
        env = env or project_env(tmp_path, **extra)
        if not (tmp_path / "db.sqlite3").exists() and "sqlite" in env["DATABASE_URL"]:
            migrate(env)
        server = Server(env, tmp_path / f"daphne-{len(started)}.log").start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# Many processes on the machine's Redis and PostgreSQL (issue 3).


def _postgres_admin():
    import psycopg

    return psycopg.connect(POSTGRES_URL, autocommit=True)


@pytest.fixture(scope="session")
def postgres_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database of this run's own, cloned by ``postgres_url`` for each test."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"scraperproj_test_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate(project_env(tmp_path_factory.mktemp("pg"), DATABASE_URL=_database_url(name)))
        yield name
    finally:
        with _postgres_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _database_url(name: str) -> str:
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test; dropped after it."""
    name = f"{postgres_template}_{uuid.uuid4().hex[:8]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield _database_url(name)
    with _postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    need_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def scale_env(tmp_path: Path, postgres_url: str, redis_url: str) -> dict[str, str]:
    """Environment for web and worker processes sharing one Redis and one PostgreSQL.

    The channel prefix is the test's own, so runs side by side on one Redis
    (another checkout's, another test's leftovers) never take each other's wake-ups.
    """
    return project_env(
        tmp_path,
        DATABASE_URL=postgres_url,
        REDIS_URL=redis_url,
        CHANNELS_PREFIX=f"test{uuid.uuid4().hex[:10]}",
    )


class Worker:
    """A real ``manage.py runworker scan-jobs`` process; its id is read from its log."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.worker_id = ""

    def start(self) -> Worker:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", "scan-jobs"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.worker_id = self._wait_for_id()
        return self

    def _wait_for_id(self, seconds: float = 30) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}")
            found = re.search(r"worker (\S+) listening", self.log_path.read_text())
            if found:
                return found.group(1)
            time.sleep(0.05)
        raise RuntimeError(f"worker did not start within {seconds} s")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, seconds: float = 30) -> int:
        return self.process.wait(seconds)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator:
    """Starts runworker processes; kills any still running after the test."""
    started: list[Worker] = []

    def make(env: dict[str, str]) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture
async def runner():
    """A real runner on the test's loop, as the web process or a worker runs one."""
    from scans import runner as runner_module

    instance = runner_module.Runner(worker_id="test-runner")
    runner_module._runner = instance
    yield instance
    await instance.close()
    runner_module._runner = None
