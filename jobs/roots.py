"""Whether a location lies under an allowed root, compared after normalising, never as written.

Local paths are resolved (``..`` and symlinks followed), URLs compared by protocol and path
segments (a ``..`` in a URL's path is refused), and chained fsspec URLs (``a::b``, which open
what the last part names) refused unless a root is itself chained.
"""

from __future__ import annotations

import os
import posixpath

LOCAL_PROTOCOLS = ("file", "local")


def under(location: str, root: str) -> bool:
    """``location`` lies under ``root``, both normalised (see the module docstring)."""
    if "::" in root:  # the operator allows chained URLs under this prefix, compared as written
        return ".." not in location.replace("::", "/").split("/") and _below(location, root.rstrip("/"))
    if "::" in location:
        return False
    place, base = _normalised(location), _normalised(root)
    if place is None or base is None or place[0] != base[0]:
        return False
    if place[0] == "file":
        return os.path.commonpath([place[1], base[1]]) == base[1]
    return _below(place[1], base[1].rstrip("/"))


def _normalised(location: str) -> tuple[str, str] | None:
    """(protocol, path): local paths resolved; a URL's path with ``.`` and doubled ``/`` removed;
    None for a URL with ``..`` in its path."""
    protocol, found, rest = location.partition("://")
    if not found:
        protocol, rest = "file", location
    protocol = protocol.lower()
    if protocol in LOCAL_PROTOCOLS:
        return "file", os.path.realpath(os.path.expanduser(rest))
    if ".." in rest.split("/"):
        return None
    return protocol, posixpath.normpath("/" + rest).lstrip("/")


def _below(location: str, root: str) -> bool:
    return location == root or location.startswith(root + "/")
