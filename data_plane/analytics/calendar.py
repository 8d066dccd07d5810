"""The tenant's calendar: local days, weeks (Monday first), months and hours as UTC instants, DST included."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from kernel.errors import ValidationFailed

Interval = Literal["hour", "day", "week", "month"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_QUARTER_HOUR = dt.timedelta(minutes=15)
# Every instant a datetime can hold, in µs; lake timestamps lie in between (year 1 to 9999).
MIN_US = -62_135_596_800_000_000
MAX_US = 253_402_300_799_999_999
# The days whose local midnight is a datetime in every time zone (offsets stay within a day).
FIRST_DAY = dt.date(1, 1, 2)
LAST_DAY = dt.date(9999, 12, 30)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; 400 ``unknown_time_zone`` when there is none such."""
    try:
        if not name or name != name.strip() or name.startswith("/") or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationFailed(
            f"{name!r} is not an IANA time zone such as 'Europe/Paris' or 'UTC'.", code="unknown_time_zone"
        ) from None


def to_us(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly (no float on the way)."""
    delta = moment.astimezone(dt.UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int, tz: dt.tzinfo = dt.UTC) -> dt.datetime:
    """The instant ``us`` in ``tz``; total: an instant whose local time would leave the years 1..9999
    (year 1 west of Greenwich, 9999 east of it) stays in UTC, and values past them are clamped."""
    moment = _EPOCH + dt.timedelta(microseconds=min(max(int(us), MIN_US), MAX_US))
    try:
        return moment.astimezone(tz)
    except (OverflowError, ValueError):
        return moment


def day_start(day: dt.date, tz: ZoneInfo) -> int:
    """The first instant of the local ``day``, in microseconds.

    NOTE: where midnight does not exist (a DST jump at 00:00) ``fold=0`` reads it with the offset
    before the jump, which lands exactly on the jump: the first instant the day does have.
    """
    return to_us(dt.datetime.combine(day, dt.time(0), tzinfo=tz))


def period_start(day: dt.date, interval: Interval) -> dt.date:
    """The local date a day's week (Monday) or month (the 1st) starts on; the day itself otherwise."""
    if interval == "week":
        return day - dt.timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def next_period(day: dt.date, interval: Interval) -> dt.date:
    if interval == "week":
        return day + dt.timedelta(days=7)
    if interval == "month":
        return dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return day + dt.timedelta(days=1)


_SLOT = 15 * 60 * 1_000_000  # no bucket is shorter than 30 minutes (Lord Howe's DST step)


def locate(starts: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``searchsorted(starts, ts, "right") - 1`` for sorted bucket starts, in a few vector passes: a
    table maps each 15-minute slot to the bucket its beginning lies in, and since no bucket is shorter
    than two slots, a timestamp is in that bucket or the next. Timestamps before ``starts[0]`` give -1."""
    if len(ts) < 1024 or len(starts) < 2:
        return np.searchsorted(starts, ts, side="right") - 1
    origin = int(starts[0])
    slots = (int(starts[-1]) - origin) // _SLOT + 2
    table = np.searchsorted(starts, origin + np.arange(slots, dtype=np.int64) * _SLOT, side="right") - 1
    slot = (ts - origin) // _SLOT
    inside = (slot >= 0) & (slot < slots)
    guess = table[np.clip(slot, 0, slots - 1)]
    following = np.minimum(guess + 1, len(starts) - 1)
    guess = guess + ((following > guess) & (ts >= starts[following]))
    guess[~inside] = np.searchsorted(starts, ts[~inside], side="right") - 1
    return guess


@dataclass(frozen=True)
class Buckets:
    """Consecutive buckets: ``labels[i]`` starts at ``starts[i]`` (µs); the last ends at ``end``."""

    labels: list[str]
    starts: np.ndarray
    end: int

    def index(self, ts: np.ndarray) -> np.ndarray:
        """Bucket of each timestamp (all must lie in ``[starts[0], end)``)."""
        return locate(self.starts, ts)


def buckets(interval: Interval, first: dt.date, last: dt.date, tz: ZoneInfo) -> Buckets:
    """The buckets covering the local dates ``first``..``last`` (inclusive), clipped to that range:
    the first bucket starts at ``first`` even when its week or month began earlier, and is labelled
    with the date its period starts on (hours with their local time and offset)."""
    start = day_start(first, tz)
    end = day_start(last + dt.timedelta(days=1), tz)
    labels: list[str] = []
    starts: list[int] = []
    if interval == "hour":
        moment = from_us(start)
        stop = from_us(end)
        while moment < stop:
            local = moment.astimezone(tz)
            if local.minute == 0 and local.second == 0:
                labels.append(local.isoformat())
                starts.append(to_us(moment))
            moment += _QUARTER_HOUR
    else:
        day = period_start(first, interval)
        while day <= last:
            labels.append(day.isoformat())
            starts.append(max(start, day_start(day, tz)))
            day = next_period(day, interval)
    return Buckets(labels, np.asarray(starts, dtype=np.int64), end)


@dataclass(frozen=True)
class Days:
    """Local dates of instants over a span: ``ordinal(ts)`` is ``date.toordinal()`` of each local date."""

    base: int  # ordinal of the first day covered
    starts: np.ndarray

    def ordinal(self, ts: np.ndarray) -> np.ndarray:
        return locate(self.starts, ts) + self.base


def days(tz: ZoneInfo, low_us: int, high_us: int) -> Days:
    """A day table covering every instant in ``[low_us, high_us]`` within the years 1..9999 (instants
    of the first and last day of that era fall on the table's edge days, so nothing overflows).

    CAUTION: it costs a row per day; callers bound the span to what their query needs."""
    first = max(from_us(low_us, tz).date(), FIRST_DAY + dt.timedelta(days=1)) - dt.timedelta(days=1)
    last = min(from_us(high_us, tz).date(), LAST_DAY - dt.timedelta(days=1)) + dt.timedelta(days=1)
    last = max(last, first)
    count = (last - first).days + 1
    starts = np.fromiter(
        (day_start(first + dt.timedelta(days=i), tz) for i in range(count)), dtype=np.int64, count=count
    )
    return Days(first.toordinal(), starts)


def period_number(ordinals: np.ndarray, interval: Interval) -> np.ndarray:
    """A running number of each local date's day, week (Monday first) or month: consecutive periods
    have consecutive numbers, so differences count periods between two dates."""
    if interval == "day":
        return ordinals.astype(np.int64)
    if interval == "week":
        return (ordinals.astype(np.int64) - 1) // 7  # ordinal 1 (0001-01-01) is a Monday
    # Months: via numpy dates (days since 1970-01-01 = ordinal - 719163).
    as_dates = (ordinals.astype(np.int64) - 719_163).astype("datetime64[D]")
    return as_dates.astype("datetime64[M]").astype(np.int64)


def period_label(number: int, interval: Interval) -> str:
    """The local date the period ``number`` (from ``period_number``) starts on."""
    return period_first_day(number, interval).isoformat()


def period_first_day(number: int, interval: Interval) -> dt.date:
    """The first day of period ``number``; total: periods before year 1 or after 9999 give its edges."""
    if interval == "day":
        ordinal = number
    elif interval == "week":
        ordinal = number * 7 + 1
    else:
        year, month = divmod(number, 12)
        if 1970 + year < 1:
            return dt.date.min
        if 1970 + year > 9999:
            return dt.date.max
        return dt.date(1970 + year, month + 1, 1)
    return dt.date.fromordinal(min(max(ordinal, 1), dt.date.max.toordinal()))


def _runs(starts: np.ndarray, end: int) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive equal-length buckets: (first index, first start, length, end of the run)."""
    bounds = [int(value) for value in starts] + [int(end)]
    lengths = [b - a for a, b in itertools.pairwise(bounds)]
    runs = []
    i = 0
    while i < len(lengths):
        j = i
        while j + 1 < len(lengths) and lengths[j + 1] == lengths[i]:
            j += 1
        runs.append((i, bounds[i], lengths[i], bounds[j + 1]))
        i = j + 1
    return runs


def bucket_sql(starts: np.ndarray, end: int, column: str) -> str:
    """SQL giving the index of the bucket holding the instant ``column`` (µs), where bucket ``i`` is
    ``[starts[i], starts[i + 1])`` and the last one ends at ``end``; NULL outside ``[starts[0], end)``.

    The same lookup as ``locate``, done by the engine: runs of buckets of one length (days between
    two DST changes, hours, weeks) become one arithmetic branch, so a range costs a few branches
    however many buckets it has. Literals are integers computed here, never caller text."""
    runs = _runs(starts, end)
    if not runs:
        return "NULL::BIGINT"
    branches = [f"CASE WHEN {column} < {runs[0][1]} THEN NULL"]
    for index, first, length, stop in runs:
        branches.append(f"WHEN {column} < {stop} THEN {index} + ({column} - {first}) // {length}")
    return " ".join([*branches, "END"])


def bucket_start_sql(starts: np.ndarray, end: int, column: str) -> str:
    """SQL giving the first instant of the bucket holding ``column`` (as ``bucket_sql``; NULL outside)."""
    runs = _runs(starts, end)
    if not runs:
        return "NULL::BIGINT"
    branches = [f"CASE WHEN {column} < {runs[0][1]} THEN NULL"]
    for _, first, length, stop in runs:
        branches.append(f"WHEN {column} < {stop} THEN {column} - ({column} - {first}) % {length}")
    return " ".join([*branches, "END"])


def period_starts(first: int, count: int, interval: Interval, tz: ZoneInfo) -> np.ndarray:
    """The first instants of ``count`` consecutive periods (numbered as ``period_number``) from ``first``,
    and of the one after them: ``count + 1`` values, clipped to the last day a datetime can hold."""
    values = []
    for number in range(first, first + count + 1):
        day = min(max(period_first_day(number, interval), FIRST_DAY), LAST_DAY)
        values.append(day_start(day, tz))
    return np.asarray(values, dtype=np.int64)
