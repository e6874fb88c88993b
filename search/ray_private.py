"""The only names this project takes from Ray that Ray does not offer publicly, each with why.

Everything else (Tune's Tuner, Searcher, schedulers, callbacks, Checkpoint) is Ray's public API. These are
for joining a cluster only (search.cluster): a refused or unreachable cluster is one line at once, not half
a minute of retries ending in a ConnectionError whose cause survives only as text.
"""
from __future__ import annotations

# A client of a cluster's GCS: the one way to ask "does a cluster answer here, and does it admit this
# driver?" without ray.init, which retries for half a minute. Ray has no public API for it.
from ray._raylet import GcsClient  # noqa: F401

try:  # Ray's token authentication (RAY_AUTH_MODE=token), from Ray 2.52
    # What ray.init does first, to load the driver's token; without it a GCS client in token mode aborts the
    # process. Ray's authentication mode as this driver sees it, to say which side lacks a token. No public API.
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled  # noqa: F401
    from ray._raylet import AuthenticationMode, get_authentication_mode  # noqa: F401
    from ray.exceptions import AuthenticationError  # noqa: F401

    TOKEN_AUTH = True
except ImportError:  # an older Ray: every cluster admits every driver, and there is no token to check
    TOKEN_AUTH = False
