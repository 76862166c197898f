"""The city view's pure parts: the service-life cutoff day agrees with adding months as
PostgreSQL and `device_view` do, and slow whole-fleet answers are shared for a few seconds
(one computation at a time) while quick ones are always read fresh."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

from dashboard_api.queries import add_months
from dashboard_api.routes import city
from dashboard_api.routes.city import SharedAnswers, life_cutoff


def test_life_cutoff_agrees_with_adding_months() -> None:
    rnd = random.Random(3)
    days = [dt.date(2024, 2, 29), dt.date(2026, 3, 31), dt.date(2026, 12, 31)]
    days += [dt.date(2016, 1, 1) + dt.timedelta(days=rnd.randrange(4000)) for _ in range(300)]
    for today in days:
        for months in (1, 13, 60, 120):
            cut = life_cutoff(today, months)
            for delta in range(-40, 40):
                x = cut + dt.timedelta(days=delta)
                assert (add_months(x, months) < today) == (x < cut), (today, months, x)


async def test_slow_answers_are_shared_and_quick_ones_are_not(monkeypatch) -> None:
    shared = SharedAnswers()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return calls

    monkeypatch.setattr(city, "SLOW_S", 0.01)
    owner = object()
    # three readers at once: one computation, one answer
    assert await asyncio.gather(*(shared.get(owner, "k", slow) for _ in range(3))) == [1, 1, 1]
    assert await shared.get(owner, "k", slow) == 1  # kept
    assert await shared.get(object(), "k", slow) == 2  # another API instance: its own
    monkeypatch.setattr(city, "SLOW_S", 10.0)
    assert await shared.get(owner, "q", slow) == 3
    assert await shared.get(owner, "q", slow) == 4  # quick: read fresh each time
