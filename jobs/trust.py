"""What the operator allows: model code, locations under the allowed roots, secrets kept out of locations.

The one gate every load of a config, tokenizer or model goes through, producer and worker alike
(:func:`remote_code`): a job's author, or a manifest found in a shared output, can ask for
``trust_remote_code`` but only the operator's ``BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE`` lets it run.
Locations are compared with the roots by :func:`jobs.roots.under`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from jobs.errors import SpecError

if TYPE_CHECKING:
    from jobs.settings import Settings

def remote_code(requested: bool, settings: Settings | None = None) -> bool:
    """``requested`` when the operator allows model code here; SpecError when asked for but not allowed."""
    if not requested:
        return False
    from jobs.settings import Settings

    if not (settings or Settings()).allow_trust_remote_code:
        raise SpecError("trust_remote_code", "the job asks for it but this process does not allow running model "
                        "code (the operator sets BATCHFORMERS_ALLOW_TRUST_REMOTE_CODE=1 where it may run: on the "
                        "workers, and where `submit`, `run` or `search` read the model)")
    return True


def looks_like_path(model: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a path."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def is_local_model(model: str) -> bool:
    """``model`` names a directory (or is meant as a path or URL) rather than a hub id."""
    return os.path.exists(os.path.expanduser(model)) or looks_like_path(model) or "://" in model


def check_model(model: str, settings: Settings) -> None:
    """SpecError when ``model`` is a local directory outside the allowed roots."""
    if is_local_model(model) and not settings.allows(model):
        raise SpecError("model", f"the model directory {model} is outside BATCHFORMERS_ALLOWED_ROOTS "
                        f"({', '.join(settings.roots())}); put it under one of them, or use a hub id")


def userinfo_of(location: str) -> str | None:
    """The ``user:password@`` part of a storage URL (never to be stored in manifests, Redis or logs).
    A user name alone is no secret, and is how some storages name a container (``abfs://container@account...``)."""
    for part in location.split("::"):
        if "://" in part:
            userinfo, at, _ = urlsplit(part).netloc.rpartition("@")
            if at and ":" in userinfo:
                return userinfo
    return None


def check_no_userinfo(field: str, location: str) -> None:
    """SpecError for a location that carries credentials: they would be written wherever the location is."""
    if userinfo_of(location) is not None:
        scheme = location.split("://")[0].rpartition("::")[2]
        raise SpecError(field, f"the {scheme}:// location carries a user name and password (user:password@...), "
                        "which would be written into the manifest, the broker and the logs; give the credentials "
                        "to the storage library instead (its environment variables or config file)")
