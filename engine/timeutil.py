"""Times to naive UTC without overflow.

``datetime.astimezone`` raises ``OverflowError`` when the UTC instant of a valid local time falls
outside years 1-9999: ``9999-12-31T23:59:59-14:00`` is 10000-01-01T13:59:59Z and
``0001-01-01T00:00:00+14:00`` is 0000-12-31T10:00:00Z. Those inputs are valid ISO 8601, so they
must give an answer (a date problem), never a 500. :func:`utc_naive` clamps them to the first or
last representable instant, which every later date check treats as "in the future" or "too long
ago"; :func:`utc_overflows` tells a caller that wants to name the field instead. :func:`utc_date`
is the calendar date of such an instant (what ``as_of`` and "after the case date" compare).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Optional, Union

__all__ = ["utc_naive", "utc_date", "utc_overflows", "When"]

When = Union[date, datetime]


def _utc_instant(v: datetime) -> Union[datetime, int]:
    """The naive UTC datetime of an aware one, or -1 / +1 when it is before year 1 / after 9999."""
    offset = v.utcoffset() or timedelta(0)
    naive = v.replace(tzinfo=None)
    if offset > timedelta(0) and naive - datetime.min < offset:
        return -1
    if offset < timedelta(0) and datetime.max - naive < -offset:
        return 1
    return naive - offset


def utc_naive(v: When) -> datetime:
    """``v`` as a naive datetime in UTC. A date is its midnight; a naive datetime is taken as UTC;
    an aware one is converted, clamped to ``datetime.min``/``datetime.max`` when the UTC instant
    lies outside years 1-9999. Never raises OverflowError."""
    if not isinstance(v, datetime):
        return datetime(v.year, v.month, v.day)
    if v.tzinfo is None or v.utcoffset() is None:
        return v.replace(tzinfo=None)
    instant = _utc_instant(v)
    if instant == -1:
        return datetime.min
    if instant == 1:
        return datetime.max
    assert isinstance(instant, datetime)
    return instant


def utc_date(v: Optional[When]) -> Optional[date]:
    """The UTC calendar date of ``v``: a date is itself, a datetime the date of :func:`utc_naive`; None
    stays None."""
    return None if v is None else utc_naive(v).date()


def utc_overflows(v: When) -> bool:
    """True when ``v`` is an aware datetime whose UTC instant lies outside years 1-9999 (so
    :func:`utc_naive` clamped it)."""
    return isinstance(v, datetime) and v.tzinfo is not None and v.utcoffset() is not None \
        and not isinstance(_utc_instant(v), datetime)

