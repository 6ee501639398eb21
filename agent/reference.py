"""Image references: the distribution reference grammar, and local OCI layouts by path.

A job's image is either what `docker pull` takes (distribution/reference: an optional
registry host, a lowercase path, an optional tag and an optional digest) or `oci:PATH[:TAG]`,
a layout on the node by its absolute, normalized path. Anything else (`--help`, spaces,
uppercase paths, `..`) never reaches skopeo.
"""

from __future__ import annotations

import re

from agent.containerpath import is_absolute_normalized

# The grammar of github.com/distribution/reference (reference.go), piece by piece.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?")
LAYOUT_TAG = re.compile(_TAG)
MAX_NAME_LENGTH = 255


def reference_problem(image: str) -> str | None:
    """Why `image` is not an image reference this agent pulls or reads, or None."""
    if image.startswith("oci:"):
        path, _, tag = image.removeprefix("oci:").partition(":")
        if not is_absolute_normalized(path) or path == "/":
            return "an oci: layout needs an absolute, normalized path"
        if tag and not LAYOUT_TAG.fullmatch(tag):
            return f"{tag!r} is not a tag"
        return None
    match = REFERENCE.fullmatch(image)
    if match is None:
        return (
            f"{image!r} is not an image reference such as busybox:1.36 or "
            "registry.example:5000/team/tool@sha256:<hex>"
        )
    if len(match.group("name")) > MAX_NAME_LENGTH:
        return f"the repository name is longer than {MAX_NAME_LENGTH} characters"
    return None
