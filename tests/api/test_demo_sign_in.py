"""`./dev.sh demo` prints demo sign-ins that work: made through `gas-safety user` (the
password policy, the audit), kept across runs, and reset when the kept file is lost."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from api_fixtures import Api

from simulator.demo import DEMO_USERS, demo_sign_in

pytestmark = pytest.mark.services


def _signs_in(api: Api, user: str, password: str) -> str | None:
    r = httpx.post(f"{api.base_url}/auth/token", data={"username": user, "password": password})
    return r.json()["role"] if r.status_code == 200 else None


def test_demo_sign_ins_work_and_are_kept(api: Api, dsn: str, tmp_path: Path) -> None:
    first = demo_sign_in(tmp_path, dsn)
    assert set(first) == {u for u, _ in DEMO_USERS}
    for user, role in DEMO_USERS:
        assert _signs_in(api, user, first[user]) == role
    assert (tmp_path / "demo-sign-in.json").stat().st_mode & 0o077 == 0
    assert demo_sign_in(tmp_path, dsn) == first  # a second run changes nothing
    (tmp_path / "demo-sign-in.json").unlink()
    again = demo_sign_in(tmp_path, dsn)  # lost: new passwords, the old ones no longer work
    assert again != first
    user = DEMO_USERS[0][0]
    assert _signs_in(api, user, again[user]) == DEMO_USERS[0][1]
    assert _signs_in(api, user, first[user]) is None
