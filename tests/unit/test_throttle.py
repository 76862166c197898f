"""Sign-in and resident limiting, client addresses, the password rules, the stream verdict
and the hash pool's bound: pure code, clock passed in, no services."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import pytest

from dashboard_api import passwords
from dashboard_api.attempts import ResidentLimiter
from dashboard_api.clients import client_address, networks
from dashboard_api.hashing import HashingBusy, HashPool
from dashboard_api.identity import Principal, Role
from dashboard_api.sessions import ended
from dashboard_api.throttle import Backoff, Ledger, LoginThrottle


def _fail(throttle: LoginThrottle, account: str, client: str, now: float) -> float:
    """One failed attempt if admitted; the wait asked for if refused (0 when admitted)."""
    verdict = throttle.admit(account, client, now)
    return 0.0 if verdict.allowed else verdict.retry_after_s


def test_backoff_doubles_after_the_free_failures_up_to_the_cap() -> None:
    b = Backoff(free=3, base_s=1.0, cap_s=60.0)
    assert [b.wait_s(n) for n in range(11)] == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert b.wait_s(10_000) == 60.0


def test_an_attacker_at_one_address_waits_ever_longer() -> None:
    throttle = LoginThrottle()
    now = 1000.0
    for _ in range(5):
        assert _fail(throttle, "ana", "203.0.113.9", now) == 0.0
    waits = []
    for _ in range(10):
        wait = _fail(throttle, "ana", "203.0.113.9", now)
        assert wait > 0
        refused = throttle.admit("ana", "203.0.113.9", now + wait - 0.01)
        assert not refused.allowed and refused.scope == "account_client"
        now += wait
        assert _fail(throttle, "ana", "203.0.113.9", now) == 0.0  # admitted, and failed
        waits.append(round(wait))
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_the_real_user_elsewhere_is_not_held_back_and_success_clears_their_count() -> None:
    throttle = LoginThrottle()
    for _ in range(6):
        _fail(throttle, "ana", "203.0.113.9", 0.0)
    assert not throttle.admit("ana", "203.0.113.9", 0.5).allowed
    verdict = throttle.admit("ana", "198.51.100.7", 0.5)
    assert verdict.attempt is not None
    throttle.succeeded(verdict.attempt, 0.5)
    for _ in range(4):  # typos by the real user: still free, the success reset them
        _fail(throttle, "ana", "198.51.100.7", 1.0)
    ok = throttle.admit("ana", "198.51.100.7", 1.0)
    assert ok.attempt is not None
    throttle.succeeded(ok.attempt, 1.0)
    assert throttle.pair.failures("ana\x00198.51.100.7", 1.0) == 0


def test_one_address_spraying_many_accounts_is_throttled() -> None:
    throttle = LoginThrottle()
    for i in range(30):
        assert _fail(throttle, f"user{i}", "203.0.113.9", 0.0) == 0.0
    verdict = throttle.admit("user999", "203.0.113.9", 0.0)
    assert not verdict.allowed and verdict.scope == "client" and verdict.first_refusal
    assert not throttle.admit("user998", "203.0.113.9", 0.1).first_refusal
    assert throttle.admit("user999", "198.51.100.7", 0.0).allowed


def test_many_addresses_on_one_account_hold_back_only_new_addresses() -> None:
    throttle = LoginThrottle()
    home = throttle.admit("ana", "198.51.100.7", 0.0)
    assert home.attempt is not None
    throttle.succeeded(home.attempt, 0.0)
    for i in range(30):
        assert _fail(throttle, "ana", f"203.0.113.{i}", 10.0) == 0.0
    stranger = throttle.admit("ana", "192.0.2.50", 10.0)
    assert not stranger.allowed and stranger.scope == "account"
    assert stranger.retry_after_s == 2.0
    assert throttle.known("ana", "198.51.100.7", 10.0)
    again = throttle.admit("ana", "198.51.100.7", 10.0)  # the user's own address
    assert again.attempt is not None
    throttle.succeeded(again.attempt, 10.0)
    # Not forever: the slot comes back after the (capped) wait.
    assert throttle.admit("ana", "192.0.2.50", 12.0).allowed


def test_a_burst_of_concurrent_guesses_cannot_all_pass_before_the_first_fails() -> None:
    throttle = LoginThrottle()
    verdicts = [throttle.admit("ana", "203.0.113.9", 0.0) for _ in range(200)]
    assert sum(v.allowed for v in verdicts) == 5
    # An attempt that never reached the password check gives its count back.
    admitted = [v.attempt for v in verdicts if v.attempt is not None]
    throttle.abandoned(admitted[0])
    assert throttle.admit("ana", "203.0.113.9", 0.0).allowed


def test_ledgers_forget_and_stay_bounded() -> None:
    ledger = Ledger(Backoff(1, 1.0, 10.0, forget_s=60.0), max_keys=2)
    for key in ("a", "b", "c"):
        ledger.add(key, 0.0)
    assert len(ledger) == 2 and ledger.failures("a", 0.0) == 0
    assert ledger.retry_after("c", 0.5) == 0.5
    assert ledger.failures("c", 60.0) == 0 and len(ledger) == 1


def test_client_addresses() -> None:
    proxies = networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("203.0.113.9", "198.51.100.7", proxies) == "203.0.113.9"
    assert client_address("203.0.113.9", "198.51.100.7", ()) == "203.0.113.9"
    assert client_address("127.0.0.1", "198.51.100.7", proxies) == "198.51.100.7"
    assert client_address("127.0.0.1", None, proxies) == "127.0.0.1"
    # Read from the right: the first entry that is not a trusted proxy.
    assert client_address("127.0.0.1", "1.2.3.4, 198.51.100.7, 10.1.1.1",
                          proxies) == "198.51.100.7"
    # Garbage before the proxy: the proxy itself is the client.
    assert client_address("127.0.0.1", "198.51.100.7, not-an-ip", proxies) == "127.0.0.1"
    # IPv6 by /64; an IPv4-mapped address as the IPv4 one.
    assert client_address("2001:db8:1:2:3:4:5:6", None, ()) == "2001:db8:1:2::/64"
    assert client_address("::ffff:203.0.113.9", None, ()) == "203.0.113.9"
    with pytest.raises(ValueError):
        networks(["not a network"])


@pytest.mark.parametrize(("password", "username", "reason"), [
    ("short", None, "at least 12 characters"),
    ("x" * 257, None, "at most 256 characters"),
    ("aaaaaaaaaaaa", None, "one character repeated"),
    ("abcabcabcabc", None, "a pattern of up to 4 characters repeated"),
    ("abcdefghijklm", None, "a straight run of consecutive characters"),
    ("123456789012", None, "a straight run of consecutive characters"),
    ("dispatch.li in the morning", "dispatch.li", "contains the username"),
    ("Password1234", None, "one of the 20,000 most common passwords"),
    ("qwertyqwerty", None, "one of the 20,000 most common passwords"),
    ("passwordpassword", None, "a common password repeated"),
    ("iloveyou1234", None, "a common password with digits or symbols added"),
    ("!!sunshine2024", None, "a common password with digits or symbols added"),
    ("correct horse battery staple", "dispatch.li", None),
    ("zähne putzen nicht vergessen", None, None),
    ("x" * 200 + "y", None, None),
])
def test_password_rules(password: str, username: str | None, reason: str | None) -> None:
    assert passwords.problem(password, username) == reason


def test_the_common_list_is_shipped_and_large() -> None:
    common = passwords.common_passwords()
    assert len(common) >= 10_000 and "password" in common and "123456" in common


def test_a_stranger_cannot_lock_a_resident_out() -> None:
    limiter = ResidentLimiter()
    for _ in range(5):
        check, _, _ = limiter.begin("h1", "203.0.113.9", 0.0)
        assert check is not None  # ...and it fails: counted already
    check, wait, scope = limiter.begin("h1", "203.0.113.9", 1.0)
    assert check is None and scope == "household_client" and wait == 899.0
    mine, _, _ = limiter.begin("h1", "198.51.100.7", 1.0)
    assert mine is not None
    limiter.passed(mine)
    # One client walking the households is stopped after 20 failures in all.
    for i in range(15):
        assert limiter.begin(f"h{i + 100}", "203.0.113.9", 2.0)[0] is not None
    check, _, scope = limiter.begin("h999", "203.0.113.9", 2.0)
    assert check is None and scope == "client"


def test_many_clients_on_one_household_spare_its_known_client() -> None:
    limiter = ResidentLimiter()
    mine, _, _ = limiter.begin("h1", "198.51.100.7", 0.0)
    assert mine is not None
    limiter.passed(mine)
    for i in range(50):
        assert limiter.begin("h1", f"203.0.113.{i}", 1.0)[0] is not None
    check, _, scope = limiter.begin("h1", "192.0.2.1", 1.0)
    assert check is None and scope == "household"
    assert limiter.begin("h1", "198.51.100.7", 1.0)[0] is not None


def _principal(via: str = "token", version: int | None = 3,
               expires: dt.datetime | None = None, key_id: int | None = None) -> Principal:
    return Principal(1, "ana", Role.operator, via, token_version=version, expires_at=expires,
                     key_id=key_id)


def test_stream_verdicts() -> None:
    now = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.UTC)
    later = now + dt.timedelta(minutes=5)
    user = {"disabled": False, "token_version": 3}
    assert ended(_principal(expires=later), user, None, now) is None
    assert ended(_principal(expires=later), {**user, "disabled": True}, None, now) == (
        "user disabled")
    assert ended(_principal(expires=later), None, None, now) == "user disabled"
    assert "token revoked" in str(ended(_principal(expires=later),
                                        {**user, "token_version": 4}, None, now))
    assert ended(_principal(expires=now), user, None, now) == "token expired"
    keyed = _principal("api_key", None, later, key_id=9)
    key = {"revoked_at": None, "expires_at": later}
    assert ended(keyed, user, key, now) is None
    assert ended(keyed, {**user, "token_version": 8}, key, now) is None  # keys have no version
    assert ended(keyed, user, {**key, "revoked_at": now}, now) == "API key revoked"
    assert ended(keyed, user, {**key, "expires_at": now}, now) == "API key expired"


async def test_the_hash_pool_refuses_at_once_when_full() -> None:
    pool = HashPool(workers=1, max_pending=2)
    release = threading.Event()
    running = [asyncio.create_task(pool.run(release.wait, 5.0)) for _ in range(2)]
    while pool.pending < 2:
        await asyncio.sleep(0)
    with pytest.raises(HashingBusy):
        await pool.run(release.wait, 5.0)
    release.set()
    assert await asyncio.gather(*running) == [True, True]
    assert pool.pending == 0
    assert await pool.run(lambda: 42) == 42


async def test_requests_to_a_limited_path_take_turns_and_wait_a_bounded_time() -> None:
    from dashboard_api.limits import ConcurrencyLimit

    release = asyncio.Event()
    started: list[int] = []

    async def app(scope, receive, send) -> None:
        started.append(scope["n"])
        if scope["path"] == "/auth/token":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    refusals: list[int] = []
    limit = ConcurrencyLimit(app, ["/auth/token"], concurrent=1, max_waiting=2,
                             max_wait_s=0.2, refused=lambda: refusals.append(1))

    async def call(n: int, path: str = "/auth/token") -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        await limit({"type": "http", "path": path, "n": n, "headers": []}, receive, send)
        return sent[0]["status"]

    first = asyncio.create_task(call(1))
    waiting = [asyncio.create_task(call(n)) for n in (2, 3)]
    while limit.waiting < 2:
        await asyncio.sleep(0)
    assert await call(4) == 503  # the queue is full: at once
    assert await call(5, "/alarms") == 200  # other paths are not held
    assert [await t for t in waiting] == [503, 503]  # waited max_wait_s for a turn
    assert started == [1, 5] and len(refusals) == 3
    release.set()
    assert await first == 200
    assert await call(6) == 200  # no turn leaked
