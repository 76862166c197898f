"""The residents' public check (household id + phone) under guessing, against the real API
and database: a stranger's failures lock out only the stranger, one client walking many
households is stopped, and many clients on one household spare the resident's own."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable

import pytest

from gateway.ops.provision import generate_city, provision

pytestmark = pytest.mark.services


def _address(prefix: str, who: str) -> str:
    """A made-up client address of this test's own (sent as X-Forwarded-For, which the test
    API believes from 127.0.0.1), in 100.64.0.0/10: no two tests share limiter state."""
    n = int.from_bytes(hashlib.sha256(f"{prefix}/{who}".encode()).digest()[:3], "big")
    return str(ipaddress.IPv4Address(0x64400000 + n))


@pytest.fixture
def address(prefix: str) -> Callable[[str], str]:
    """`address(who)`: `who`'s client address in this test."""
    return functools.partial(_address, prefix)

LOOKUP = "/upgrades/resident/lookup"
WRONG = "+49 30 0000 000"  # no generated household has a German number


@pytest.fixture
def street(dsn, prefix):
    houses = generate_city(30, seed=11, prefix=prefix)
    provision(dsn, houses, None, None)
    return houses


async def _lookup(client, house, phone: str, ip: str):
    return await client.post(LOOKUP, json={"household_id": house.id, "phone": phone},
                             headers={"X-Forwarded-For": ip})


async def test_a_strangers_guesses_do_not_lock_the_resident_out(client, street,
                                                                address) -> None:
    house = street[0]
    stranger, resident = address("stranger"), address("resident")
    for _ in range(5):
        assert (await _lookup(client, house, WRONG, stranger)).status_code == 404
    r = await _lookup(client, house, house.owner_phone, stranger)
    assert r.status_code == 429 and r.json()["scope"] == "household_client"
    assert int(r.headers["retry-after"]) > 800
    # The finding: five wrong guesses by anyone locked the resident out for 15 minutes.
    r = await _lookup(client, house, house.owner_phone, resident)
    assert r.status_code == 200 and r.json()["community"] == house.community


async def test_one_client_guessing_across_households_is_stopped(client, street,
                                                                address) -> None:
    walker = address("walker")
    for house in street[:20]:
        assert (await _lookup(client, house, WRONG, walker)).status_code == 404
    r = await _lookup(client, street[20], street[20].owner_phone, walker)
    assert r.status_code == 429 and r.json()["scope"] == "client"
    assert r.json()["detail"].startswith("too many failed checks from your address")
    # The households themselves are not blocked for their residents.
    r = await _lookup(client, street[3], street[3].owner_phone, address("resident 3"))
    assert r.status_code == 200


async def test_many_clients_on_one_household_spare_its_residents_address(
        client, street, address, as_role) -> None:
    house = street[1]
    home = address("home")
    assert (await _lookup(client, house, house.owner_phone, home)).status_code == 200
    for i in range(50):
        r = await _lookup(client, house, WRONG, address(f"bot {i}"))
        assert r.status_code == 404
    r = await _lookup(client, house, house.owner_phone, address("somewhere new"))
    assert r.status_code == 429 and r.json()["scope"] == "household"
    assert (await _lookup(client, house, house.owner_phone, home)).status_code == 200
    metrics = (await client.get("/metrics", headers=as_role["viewer"])).text
    refused = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines()
               if line.startswith("gas_api_refused_total{")}
    assert refused['reason="resident_failed"'] >= 50
    assert refused['reason="resident_throttled"'] >= 1
