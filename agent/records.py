"""Domain dataclasses <-> JSON-ready records by field name, derived from their declarations.

A record is what json.dumps takes: a dataclass becomes an object of its fields by name, an
enum its value, a tuple a list, a mapping an object, a datetime ISO 8601 text in UTC. Reading
walks the dataclass's declared field types; a field the record lacks takes its default, so a
field added to a dataclass needs nothing here, and a record that does not fit its type
raises ValueError, TypeError or KeyError.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, TypeVar, cast

T = TypeVar("T")
Convert = Callable[[Any], Any]


def format_time(value: datetime) -> str:
    """A datetime as stored: ISO 8601 in UTC to the microsecond, so text order is time order."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(value: str) -> datetime:
    """The inverse of format_time."""
    return datetime.fromisoformat(value)


def to_record(value: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready data."""
    return cast(dict[str, Any], _dataclass_converter(type(value), writing=True)(value))


def from_record(cls: type[T], data: Any) -> T:
    """A `cls` dataclass of a record that to_record wrote (or one written before fields
    were added to `cls`)."""
    return cast(T, _dataclass_converter(cls, writing=False)(data))


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """The dataclass's fields, in declaration order: the keys of its records."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(field.name for field in dataclasses.fields(cls))
    return names


# The store converts on every read and write: each dataclass's converters are made once, and
# a field whose type needs no conversion (text, numbers, flags, None of them) has none.
_CONVERTERS: dict[tuple[type[Any], bool], Convert] = {}
_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}
PLAIN = (str, int, float, bool)


def _dataclass_converter(cls: type[Any], writing: bool) -> Convert:
    found = _CONVERTERS.get((cls, writing))
    if found is None:
        found = _CONVERTERS[cls, writing] = _make_dataclass_converter(cls, writing)
    return found


def _make_dataclass_converter(cls: type[Any], writing: bool) -> Convert:
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    converters = ((name, _converter(hints[name], writing)) for name in names)
    converted = tuple((name, convert) for name, convert in converters if convert)

    def write(value: Any) -> dict[str, Any]:
        return _convert_fields({name: getattr(value, name) for name in names})

    def read(data: Mapping[str, Any]) -> Any:
        # A field the class lacks is a TypeError of its constructor.
        return cls(**_convert_fields(dict(data)))

    def _convert_fields(values: dict[str, Any]) -> dict[str, Any]:
        for name, convert in converted:
            if name in values:
                values[name] = convert(values[name])
        return values

    return write if writing else read


def _converter(hint: Any, writing: bool) -> Convert | None:
    """How a field of type `hint` is written to (or read from) its record; None when it is
    taken as it is."""
    inner = _optional(hint)
    if hint in PLAIN or inner in PLAIN or hint is Any:
        return None
    if inner is not None:
        return _or_none(_converter(inner, writing))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return _each(_converter(args[0], writing), list if writing else tuple)
    if origin is Mapping or origin is dict:
        return _each_value(_converter(args[1], writing))
    if dataclasses.is_dataclass(hint):
        return _dataclass_converter(cast(type[Any], hint), writing)
    if issubclass(hint, enum.Enum):
        # A member by a dict's lookup (KeyError for another value): an enum's call does the
        # same in Python code, and a read converts several enums a row.
        return attrgetter("value") if writing else hint._value2member_map_.__getitem__
    if hint is datetime:
        return format_time if writing else datetime.fromisoformat
    raise TypeError(f"records cannot hold a {hint}")


def _optional(hint: Any) -> Any:
    """X of `X | None`; None for any other type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is types.UnionType and len(args) == 2 and type(None) in args:
        return next(arg for arg in args if arg is not type(None))
    return None


def _or_none(convert: Convert | None) -> Convert | None:
    if convert is None:
        return None
    given: Convert = convert
    return lambda value: None if value is None else given(value)


def _each(convert: Convert | None, sequence: Callable[[Any], Any]) -> Convert:
    if convert is None:
        return sequence
    given: Convert = convert
    return lambda value: sequence(given(item) for item in value)


def _each_value(convert: Convert | None) -> Convert:
    if convert is None:
        return dict
    given: Convert = convert
    return lambda value: {key: given(item) for key, item in value.items()}
