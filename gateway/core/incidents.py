"""Incidents: the gas alarms of one building grouped together (a riser leak, not many leaks)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["group_incidents"]


def group_incidents(
    building: npt.ArrayLike,
    household: npt.ArrayLike,
    ts: npt.ArrayLike,
    window_s: float = 600.0,
    min_households: int = 2,
) -> npt.NDArray[np.int64]:
    """Group gas alarms of one building into incidents (a riser leak, not many leaks).

    Pass the gas alarms (PREALARM/LEAK/RISING) raised in the last `window_s` together
    with the new ones: building id (any integer code), household id and raise time of
    each. Alarms of one building chain into one cluster while each follows the previous
    one within `window_s`. A cluster spanning at least `min_households` distinct
    households is an incident: every alarm in it gets the incident key, the position
    (in the input) of the cluster's earliest alarm. Alarms outside an incident get -1.
    """
    bld = np.asarray(building).ravel()
    hh = np.asarray(household).ravel()
    t = np.asarray(ts, dtype=np.float64).ravel()
    n = t.size
    if not bld.size == hh.size == n:
        raise ValueError("group_incidents: all arrays must have the same length")
    key = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return key
    order = np.lexsort((t, bld))  # by building, then time (stable for ties)
    b_s, t_s = bld[order], t[order]
    starts = np.ones(n, dtype=np.bool_)
    starts[1:] = (b_s[1:] != b_s[:-1]) | (t_s[1:] - t_s[:-1] > window_s)
    cluster = np.cumsum(starts) - 1
    # distinct households per cluster
    h_s = hh[order]
    by_hh = np.lexsort((h_s, cluster))
    c2, h2 = cluster[by_hh], h_s[by_hh]
    new_pair = np.ones(n, dtype=np.bool_)
    new_pair[1:] = (c2[1:] != c2[:-1]) | (h2[1:] != h2[:-1])
    distinct = np.bincount(c2[new_pair], minlength=int(cluster[-1]) + 1)
    first_pos = order[np.flatnonzero(starts)]
    is_incident = distinct[cluster] >= min_households
    key[order[is_incident]] = first_pos[cluster[is_incident]]
    return key
