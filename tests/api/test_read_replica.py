"""The API's reads that may lag, against a real streaming replica of the private stack's
PostgreSQL (gateway.ops.replica): served by the replica while it is close behind, by the
primary when it lags past db.read_max_lag_s or dies, and back once it recovers; every
answer says which served it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from api_fixtures import JWT_SECRET, _ServerThread
from support import wait_until

from dashboard_api.main import create_app
from gateway.ops.replica import Replica
from gateway.ops.stack import Stack
from gateway.settings import Settings

MAX_LAG_S = 2.0


@pytest.fixture(scope="module")
def replica(stack: Stack) -> Iterator[Replica]:
    r = Replica(stack)
    r.up()
    yield r
    r.remove()


@pytest.fixture(scope="module")
def lag_api(dsn: str, replica: Replica) -> Iterator[str]:
    rt = replica.runtime()
    assert rt is not None
    settings = Settings(environment="test",
                        db={"dsn": dsn, "read_dsn": rt.dsn, "read_max_lag_s": MAX_LAG_S},
                        api={"jwt_secret": JWT_SECRET, "token_ttl_s": 600})
    thread = _ServerThread(create_app(settings, sse_keepalive_s=0.5, rollups_every_s=None))
    thread.start()
    wait_until(lambda: thread.server.started or not thread.is_alive(), 30, interval_s=0.02,
               what="the API with a read replica to start")
    try:
        yield f"http://127.0.0.1:{thread.port}"
    finally:
        thread.server.should_exit = True
        thread.join(10)


def _audit(dsn: str, actor: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (actor, action, entity, entity_id, details)"
                     " VALUES (%s, 'test.replica', 'test', '1', '{}')", (actor,))


def _read(client: httpx.Client, headers: dict[str, str], actor: str) -> tuple[str, int, Any]:
    r = client.get("/audit", params={"actor": actor}, headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["X-Read-Source"], len(r.json()["items"]), r.headers


@pytest.mark.services
def test_reads_follow_the_replica_and_fall_back(
    dsn: str, replica: Replica, lag_api: str, as_role: dict[str, dict[str, str]]
) -> None:
    admin = as_role["admin"]
    rt = replica.runtime()
    assert rt is not None
    with httpx.Client(base_url=lag_api, timeout=10) as c:
        # 1. caught up: the replica serves, with its measured lag
        actor = f"replica-{uuid.uuid4().hex[:8]}"
        _audit(dsn, actor)
        wait_until(lambda: _read(c, admin, actor)[:2] == ("replica", 1), 15,
                   what="the replica to serve the new audit entry")
        _, _, headers = _read(c, admin, actor)
        assert 0 <= float(headers["X-Replica-Lag-Seconds"]) <= MAX_LAG_S
        health = c.get("/healthz").json()["read_replica"]
        assert health["in_use"] is True
        # the live board and writes never go to the replica
        assert "X-Read-Source" not in c.get("/board", headers=admin).headers

        # 2. replay paused: lag grows past the bound, the primary answers (fresh data)
        with psycopg.connect(rt.admin_dsn, autocommit=True) as sup:
            sup.execute("SELECT pg_wal_replay_pause()")
            try:
                stale = f"replica-{uuid.uuid4().hex[:8]}"
                _audit(dsn, stale)
                wait_until(lambda: _read(c, admin, stale)[:2] == ("primary", 1),
                           MAX_LAG_S + 10, what="reads to move to the primary past the bound")
                assert c.get("/healthz").json()["read_replica"]["in_use"] is False
            finally:
                sup.execute("SELECT pg_wal_replay_resume()")
        wait_until(lambda: _read(c, admin, stale)[:2] == ("replica", 1), 15,
                   what="reads to return to the caught-up replica")

        # 3. the replica dies: every read still answers, from the primary
        replica.kill()
        started = time.monotonic()
        sources = [_read(c, admin, stale)[0] for _ in range(5)]
        assert sources[-1] == "primary", sources
        assert time.monotonic() - started < 10
        assert c.get("/healthz").json()["read_replica"]["in_use"] is False

        # 4. back up: back to the replica
        replica.up()
        wait_until(lambda: _read(c, admin, stale)[0] == "replica", 30,
                   what="reads to return to the restarted replica")


def test_a_replica_needs_a_running_primary(tmp_path: Any) -> None:
    from gateway.ops.stack import StackError

    with pytest.raises(StackError, match="primary PostgreSQL is not running"):
        Replica(Stack(tmp_path)).up()
