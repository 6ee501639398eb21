"""Env values hidden from viewers: a response's `env` maps keep their names, not values.

A job's env and a trigger's dispatch env often carry credentials; a viewer token (a
dashboard, a monitor) sees that they are set, not what they are, unless the agent runs
with --show-env-to-viewers.
"""

from __future__ import annotations

from typing import TypeVar

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

REDACTED = "<redacted>"
MERGE_TAG = "tag:yaml.org,2002:merge"
STRING_TAG = "tag:yaml.org,2002:str"
Response = TypeVar("Response", bound=Message)


def redacted(message: Response) -> Response:
    """`message` with every env value (and those in a spec_yaml) replaced by REDACTED: a
    copy when there is any (messages may be shared by several streams), else itself."""
    if not _scrub(message, dry_run=True):
        return message
    copy = type(message)()
    copy.CopyFrom(message)
    _scrub(copy, dry_run=False)
    return copy


def _scrub(message: Message, dry_run: bool) -> bool:
    """Replaces env values in `message` and the messages in it (or, in a dry run, only
    says whether there are any)."""
    found = False
    for field, value in message.ListFields():
        if field.name == "env" and _is_string_map(field):
            found = found or bool(value)
            if not dry_run:
                for key in value:
                    value[key] = REDACTED
        elif field.name == "spec_yaml" and field.type == FieldDescriptor.TYPE_STRING:
            hidden = redacted_yaml(value)
            found = found or hidden != value
            if not dry_run:
                setattr(message, field.name, hidden)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(field):
            items = (value,) if isinstance(value, Message) else value
            for item in items:
                found = _scrub(item, dry_run) or found
        if found and dry_run:
            return True
    return found


def redacted_yaml(text: str) -> str:
    """A deployment document with each service's env values replaced: the text itself
    when no service has env, REDACTED when it does not parse.

    The document's node graph is changed, not the data it loads to: an env value written
    once with an anchor (`api: {shared: &secrets {PASSWORD: ...}}`, then `env: *secrets`,
    a `<<` merge, or one value `*pw`) is one node wherever the document names it, so it is
    hidden everywhere. Values are never compared: a value that merely equals an env value
    elsewhere stays, so that what is hidden tells nothing of a secret.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return REDACTED
    if not isinstance(root, yaml.MappingNode):
        return REDACTED
    hidden: set[int] = set()
    # Every `services`, `env` and service of the name: a key written twice is loaded as
    # its last, and a merged one gives way to one written out.
    for services in _values_named(root, "services", set()):
        for service in _mapping_values(services):
            for env in _values_named(service, "env", set()):
                _hide_values(env, hidden)
    if not hidden:
        return text
    return str(yaml.serialize(root, Dumper=yaml.SafeDumper))


def _mapping_values(node: yaml.Node | None) -> list[yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return []
    return [value for _, value in _entries(node, set())]


def _values_named(mapping: yaml.Node, key: str, seen: set[int]) -> list[yaml.Node]:
    """The values of `key` in a mapping node, its `<<` merges included."""
    if not isinstance(mapping, yaml.MappingNode):
        return []
    return [
        value
        for name, value in _entries(mapping, seen)
        if isinstance(name, yaml.ScalarNode) and name.value == key
    ]


def _entries(mapping: yaml.MappingNode, seen: set[int]) -> list[tuple[yaml.Node, yaml.Node]]:
    """A mapping node's key and value nodes, with those of the mappings it merges (`<<`);
    a mapping already walked (an alias cycle) adds nothing."""
    if id(mapping) in seen:
        return []
    seen.add(id(mapping))
    entries: list[tuple[yaml.Node, yaml.Node]] = []
    for key, value in mapping.value:
        if key.tag == MERGE_TAG:
            merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for each in merged:
                if isinstance(each, yaml.MappingNode):
                    entries.extend(_entries(each, seen))
        else:
            entries.append((key, value))
    return entries


def _hide_values(env: yaml.Node, hidden: set[int]) -> None:
    """Replaces every scalar value under an env mapping node, in place: each alias of it
    in the document is the same node."""
    if id(env) in hidden:
        return
    hidden.add(id(env))
    if isinstance(env, yaml.ScalarNode):
        env.tag, env.value, env.style = STRING_TAG, REDACTED, None
    elif isinstance(env, yaml.MappingNode):
        for _, value in _entries(env, set()):
            _hide_values(value, hidden)
    elif isinstance(env, yaml.SequenceNode):
        for item in env.value:
            _hide_values(item, hidden)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_string_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return False
    return bool(entry.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING)
