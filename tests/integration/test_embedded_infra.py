"""tools.devinfra: embedded Postgres and NATS JetStream start, serve and leave nothing behind."""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit

import asyncpg
import nats
import pytest

from tools.devinfra import create_database, drop_database, pid_alive, start_infra

pytestmark = pytest.mark.embedded


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as servers use it: TIME_WAIT leftovers of closed connections do not count.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        s.listen()
        return True


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_embedded_postgres_and_nats(tmp_path) -> None:
    infra = start_infra(tmp_path, force_embedded=True)
    try:
        assert infra.embedded_postgres and infra.embedded_nats
        pg_port, nats_port = urlsplit(infra.postgres_url).port, urlsplit(infra.nats_url).port
        assert pg_port and nats_port and not _port_free(pg_port) and not _port_free(nats_port)

        conn = await asyncpg.connect(_dsn(infra.postgres_url))
        try:
            assert "PostgreSQL" in await conn.fetchval("select version()")
        finally:
            await conn.close()

        name = f"devinfra_{uuid.uuid4().hex[:8]}"
        create_database(infra.postgres_url, name)
        create_database(infra.postgres_url, name)  # "if not exists"
        conn = await asyncpg.connect(_dsn(infra.database_url(name)))
        try:
            assert await conn.fetchval("select current_database()") == name
        finally:
            await conn.close()
        drop_database(infra.postgres_url, name)
        conn = await asyncpg.connect(_dsn(infra.postgres_url))
        try:
            assert not await conn.fetchval("select 1 from pg_database where datname = $1", name)
        finally:
            await conn.close()

        nc = await nats.connect(infra.nats_url)
        try:
            js = nc.jetstream()
            token = uuid.uuid4().hex[:8]
            subject = f"devinfra.test.{token}"
            await js.add_stream(name=f"DEVINFRA_{token}", subjects=[subject])
            first = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": token})
            second = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": token})
            assert not first.duplicate and second.duplicate is True
            info = await js.stream_info(f"DEVINFRA_{token}")
            assert info.state.messages == 1
        finally:
            await nc.close()
    finally:
        infra.stop()

    assert infra.postgres_pid and not pid_alive(infra.postgres_pid)
    assert infra.nats_pid and not pid_alive(infra.nats_pid)
    assert _port_free(pg_port) and _port_free(nats_port)
    assert list(tmp_path.iterdir()) == []  # data dirs (and any symlink to them) removed
    infra.stop()  # idempotent


def test_configured_urls_are_used_as_is(tmp_path) -> None:
    run_dir = tmp_path / "run"
    configured = {"DATABASE_URL": "postgresql://u@h:1/x", "NATS_URL": "nats://h:2"}
    infra = start_infra(run_dir, env=configured)
    assert infra.postgres_url == "postgresql+asyncpg://u@h:1/postgres"
    assert infra.nats_url == "nats://h:2"
    assert not infra.embedded_postgres and not infra.embedded_nats
    assert infra.postgres_pid is None and infra.nats_pid is None
    assert infra.database_url("other") == "postgresql+asyncpg://u@h:1/other"
    assert not run_dir.exists()
    infra.stop()

    configured["DATABASE_URL"] = "postgres://u:p%40ss@h:1/x?sslmode=disable"
    infra = start_infra(run_dir, env=configured)
    assert infra.postgres_url == "postgresql+asyncpg://u:p%40ss@h:1/postgres?sslmode=disable"
