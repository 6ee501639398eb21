"""Env values hidden from viewers: a response's `env` maps keep their names, not values.

A job's env and a trigger's dispatch env often carry credentials; a viewer token (a
dashboard, a monitor) sees that they are set, not what they are, unless the agent runs
with --show-env-to-viewers.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

REDACTED = "<redacted>"
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
    when no service has env, REDACTED when it does not parse."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        return REDACTED
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        return text if isinstance(document, dict) else REDACTED
    changed = False
    for service in services.values():
        env = service.get("env") if isinstance(service, dict) else None
        if isinstance(env, dict) and env:
            service["env"] = {key: REDACTED for key in env}
            changed = True
    return str(yaml.safe_dump(document, sort_keys=False)) if changed else text


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_string_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return False
    return bool(entry.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING)
