"""Hypothesis strategies for any protobuf message, built from its descriptor: every field may
be set or left out, scalars take their type's whole range (NaN and infinities included for
floats, unknown numbers for enums), nested messages go a few levels deep."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

_F = FieldDescriptor
_INT_RANGES = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_FIXED64: (0, 2**64 - 1),
}


def messages(cls: type[Message], depth: int = 3) -> st.SearchStrategy[Message]:
    """Messages of type `cls` (a generated class)."""
    return _message(cls.DESCRIPTOR, cls, depth)


def _message(desc: Descriptor, cls: Any, depth: int) -> st.SearchStrategy[Message]:
    if depth <= 0:
        return st.just(cls())
    optional = {f.name: _field(f, depth) for f in desc.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _build(cls: Any, values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            getattr(message, name).extend(value)
        elif field.type == _F.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message  # type: ignore[no-any-return]


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    one = _scalar(field, depth)
    if field.is_repeated:
        return st.lists(one, max_size=4)
    return one


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _F.TYPE_MESSAGE:
        nested = field.message_type
        return _message(nested, nested._concrete_class, depth - 1)
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.one_of(st.integers(low, high), st.sampled_from([low, 0, 1, high]))
    if kind == _F.TYPE_DOUBLE:
        return st.floats()
    if kind == _F.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind == _F.TYPE_STRING:
        return st.text(max_size=40)
    if kind == _F.TYPE_BYTES:
        return st.binary(max_size=80)
    if kind == _F.TYPE_ENUM:
        return st.integers(-2, len(field.enum_type.values) + 2)  # proto3 enums are open
    raise TypeError(f"no strategy for field {field.full_name} of type {kind}")
