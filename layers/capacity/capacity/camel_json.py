"""The JSON of the layer's results (a slot's state, a capacity change, a roll-up, an alert run):
their dataclass fields and computed fields, keys in camelCase, written by pydantic.

A dataclass mixes in ``CamelJson`` and gets ``as_json()``. What a field is written as is said on
the field: ``HourMinute`` times, ``UtcSeconds``/``UtcInstant`` instants, ``Rounded`` rates,
``Field(exclude=True)`` for what the JSON leaves out, ``@computed_field`` for derived figures.
The serializer of each class is built on its first ``as_json()``, not at import (cold start).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, PlainSerializer, TypeAdapter
from pydantic.alias_generators import to_camel


def iso_seconds(value: dt.datetime) -> str:
    """An instant in UTC to the second: 2030-06-14T18:00:00Z."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_millis(value: dt.datetime) -> str:
    """An instant in UTC to the millisecond, as the load test's history and faults are written."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_instant(value: dt.datetime) -> str:
    """An instant in UTC as stored, microseconds included when there are any."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


HourMinute = Annotated[dt.time, PlainSerializer(lambda value: value.strftime("%H:%M"))]
UtcSeconds = Annotated[dt.datetime, PlainSerializer(iso_seconds)]
UtcInstant = Annotated[dt.datetime, PlainSerializer(iso_instant)]
Rounded = Annotated[float | None, PlainSerializer(rounded)]

_SERIALIZERS: dict[type, TypeAdapter[Any]] = {}


class CamelJson:
    __slots__ = ()
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(alias_generator=to_camel)

    def as_json(self) -> dict[str, Any]:
        cls = type(self)
        serializer = _SERIALIZERS.get(cls) or _SERIALIZERS.setdefault(cls, TypeAdapter(cls))
        data: dict[str, Any] = serializer.dump_python(self, mode="json", by_alias=True)
        return data
