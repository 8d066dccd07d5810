"""Vectorised kernels over event arrays (numpy): funnels, retention, rolling active users, exact sums.

Inputs are plain arrays the service fetched from the warehouse; nothing here knows SQL or HTTP.
Rows are sorted by (user, time, message id) where a kernel says so: that order is the "event
order" of the funnel definitions in ``docs/analytics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_plane.analytics.schemas import FunnelStepResult


def fsum_by(keys: np.ndarray, values: np.ndarray, size: int) -> list[float]:
    """``math.fsum`` of ``values`` per key in ``range(size)``: correctly rounded, so independent of the
    order rows arrive in (a plain float sum is not)."""
    totals = [0.0] * size
    if len(keys) == 0:
        return totals
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    for key, chunk in zip(keys[np.r_[0, cuts]], np.split(values, cuts), strict=True):
        totals[int(key)] = math.fsum(chunk.tolist())
    return totals


def exact_sum(values: np.ndarray) -> int:
    """Sum of non-negative int64 microsecond values without overflow (split in two halves)."""
    if len(values) == 0:
        return 0
    high = int(np.sum(values >> 20))
    low = int(np.sum(values & ((1 << 20) - 1)))
    return (high << 20) + low


def median_us(values: np.ndarray) -> float:
    ordered = np.sort(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(int(ordered[middle]))
    return (int(ordered[middle - 1]) + int(ordered[middle])) / 2


@dataclass(frozen=True)
class FunnelPaths:
    """The attempt kept per user: its depth (steps reached), its step-1 row and its step times."""

    depth: np.ndarray  # per kept attempt
    first_row: np.ndarray  # row of the event that satisfied step 1
    times: np.ndarray  # (steps, attempts): completion time of each step (valid below depth)


def funnel_paths(
    uid: np.ndarray,
    ts: np.ndarray,
    matches: Sequence[np.ndarray],
    exclusions: Sequence[tuple[np.ndarray, int, int]],
    window_us: int,
    low: int,
    high: int,
    order: str,
) -> FunnelPaths:
    """Every possible entry is tried; per user the deepest attempt is kept, ties going to the earliest.

    Rows must be sorted by (uid, ts, message id). An attempt of a sequential funnel starts at a
    step-1 event in ``[low, high)`` and takes, for each next step, the first matching event after
    the previous step's; strict takes the user's very next event instead; ``any`` starts at any
    step's event and takes each step's first event at or after the start. Every step must fall
    within ``window_us`` of the start. ``exclusions`` are ``(mask, a, b)`` (0-based steps): an
    excluded row strictly between the steps ``a`` and ``b`` of an attempt stops it before ``b``.
    """
    steps = len(matches)
    rows = len(ts)
    if order == "any":
        anything = np.zeros(rows, dtype=bool)
        for mask in matches:
            anything |= mask
        starts = np.flatnonzero(anything & (ts >= low) & (ts < high))
    else:
        starts = np.flatnonzero(matches[0] & (ts >= low) & (ts < high))
    attempts = len(starts)
    users = uid[starts]
    start_ts = ts[starts]
    positions = np.full((steps, attempts), -1, dtype=np.int64)
    reached = np.zeros((steps, attempts), dtype=bool)
    if order == "any":
        for k, mask in enumerate(matches):
            candidates = np.flatnonzero(mask)
            if len(candidates) == 0 or attempts == 0:
                continue
            j = np.searchsorted(candidates, starts, side="left")
            ok = j < len(candidates)
            found = candidates[np.minimum(j, len(candidates) - 1)]
            ok &= (uid[found] == users) & (ts[found] - start_ts <= window_us)
            reached[k] = ok
            positions[k] = np.where(ok, found, -1)
        depth = np.cumprod(reached, axis=0).sum(axis=0)
    else:
        positions[0] = starts
        reached[0] = True
        # Only attempts still going are carried to the next step (their indices in `alive`).
        alive = np.arange(attempts)
        previous = starts
        alive_users = users
        alive_starts = start_ts
        for k in range(1, steps):
            if len(alive) == 0:
                break
            if order == "strict":
                found = previous + 1
                ok = found < rows
                found = np.where(ok, found, 0)
                ok &= matches[k][found]
            else:
                # The first row after `previous` that matches step k (needles come sorted).
                candidates = np.flatnonzero(matches[k])
                if len(candidates) == 0:
                    break
                j = np.searchsorted(candidates, previous, side="right")
                ok = j < len(candidates)
                found = candidates[np.minimum(j, len(candidates) - 1)]
            ok &= (uid[found] == alive_users) & (ts[found] - alive_starts <= window_us)
            alive, previous = alive[ok], found[ok]
            alive_users, alive_starts = alive_users[ok], alive_starts[ok]
            positions[k, alive] = previous
            reached[k, alive] = True
        depth = reached.sum(axis=0)
        for mask, a, b in exclusions:
            excluded = np.flatnonzero(mask)
            if len(excluded) == 0:
                continue
            check = depth > b
            j = np.searchsorted(excluded, positions[a], side="right")
            hit = check & (j < len(excluded))
            hit &= excluded[np.minimum(j, len(excluded) - 1)] < positions[b]
            depth = np.where(hit, np.minimum(depth, b), depth)
    # Deepest attempt per user, then the earliest start. Attempts are in (user, start) order already
    # (rows are sorted by user and starts ascend), so each user's attempts are one run.
    if attempts == 0:
        return FunnelPaths(depth[:0], positions[0][:0], np.zeros((steps, 0), dtype=np.int64))
    opens = np.r_[True, users[1:] != users[:-1]]
    run_start = np.flatnonzero(opens)
    deepest = np.maximum.reduceat(depth, run_start)
    run_of = np.cumsum(opens) - 1
    best = np.flatnonzero(depth == deepest[run_of])
    chosen = best[np.r_[True, run_of[best][1:] != run_of[best][:-1]]]
    chosen = chosen[depth[chosen] >= 1]
    # Completion time of each step of the kept attempts (in any order: the latest of its steps so far).
    kept = positions[:, chosen]
    times = np.where(kept >= 0, ts[np.maximum(kept, 0)], np.iinfo(np.int64).min)
    if order == "any":
        times = np.maximum.accumulate(times, axis=0)
    return FunnelPaths(depth[chosen], kept[0], times)


def funnel_steps(events: Sequence[str], depth: np.ndarray, times: np.ndarray) -> list[FunnelStepResult]:
    """Per-step counts, conversions, drop-off and time from the previous step, for kept attempts."""
    results: list[FunnelStepResult] = []
    first = int(np.count_nonzero(depth >= 1))
    previous = first
    for k, event in enumerate(events):
        at = depth > k
        count = int(np.count_nonzero(at))
        median = average = None
        if k and count:
            deltas = (times[k][at] - times[k - 1][at]).astype(np.int64)
            median = median_us(deltas) / 1e6
            average = exact_sum(deltas) / count / 1e6
        results.append(
            FunnelStepResult(
                step=k + 1,
                event=event,
                count=count,
                conversion_from_first=count / first if first else None,
                conversion_from_previous=count / previous if previous else None,
                drop_off=previous - count,
                median_seconds_to_convert=median,
                average_seconds_to_convert=average,
            )
        )
        previous = count
    return results


def rolling_distinct(users: np.ndarray, days: np.ndarray, window: int, first_day: int, count: int) -> np.ndarray:
    """For each of ``count`` days from ``first_day``: distinct users active in the ``window`` days
    ending that day. ``(users, days)`` are distinct activity pairs sorted by user, then day."""
    if len(users) == 0:
        return np.zeros(count, dtype=np.int64)
    user = users.astype(np.int32, copy=False)
    day = (days - first_day).astype(np.int32)
    first_day = 0
    same = np.empty(len(user), dtype=bool)
    same[0] = False
    np.equal(user[1:], user[:-1], out=same[1:])
    previous = np.empty_like(day)
    previous[0] = 0
    previous[1:] = day[:-1]
    # A user counts on the days [day, day + window - 1]; a later activity only extends that run.
    begin = np.where(same, np.maximum(day, previous + window), day)
    end = day + window - 1
    begin = np.clip(begin - first_day, 0, count)
    end = np.clip(end - first_day + 1, 0, count)
    useful = begin < end
    delta = np.bincount(begin[useful], minlength=count + 1) - np.bincount(end[useful], minlength=count + 1)
    return np.cumsum(delta)[:count]
