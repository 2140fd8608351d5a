"""Fail fast when a hub id cannot be fetched: not cached here and the hub does not answer.

Without this check an unknown ``org/name`` on a machine without network waits through
huggingface_hub's retries (about 30-40 s) before transformers gives up. One TCP connection to the
hub's endpoint, with a short timeout, tells the same in well under a second when the name does
not resolve or the port is closed. Behind a proxy (``HTTPS_PROXY``) or with ``HF_HUB_OFFLINE=1``
nothing is probed: transformers' own path is already right there.

Example:
    >>> from workbench.hub import unreachable_reason
    >>> unreachable_reason("definitely-not-cached/model-xyz", endpoint="http://127.0.0.1:9", offline=False)
    'the Hugging Face hub at http://127.0.0.1:9 cannot be reached (Connection refused)'
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

#: Seconds one connection attempt may take before the hub counts as unreachable.
CONNECT_TIMEOUT = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed id: let transformers say what is wrong with it
        return True


def unreachable_reason(repo_id: str, *, endpoint: str | None = None, offline: bool | None = None,
                       timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why ``repo_id`` cannot be fetched from the hub right now, or None when it may be.

    None when the id's config is in the local hub cache, when ``HF_HUB_OFFLINE`` is set (transformers
    then reads the cache without any network), behind a proxy, or when the endpoint accepts a TCP
    connection within ``timeout`` seconds. Otherwise one sentence naming the endpoint and the error.

    Args:
        repo_id: ``org/name``.
        endpoint: the hub's address; default huggingface_hub's (``HF_ENDPOINT``).
        offline: whether the hub is off by choice; default huggingface_hub's (``HF_HUB_OFFLINE``).
        timeout: seconds for the connection attempt.
    """
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE if offline is None else offline
    if offline or _cached(repo_id) or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None
    endpoint = endpoint or constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        detail = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return f"the Hugging Face hub at {endpoint} cannot be reached ({detail})"
    return None
