"""The HTTP APIs slimepo talks to (a judge, an inference server): which URLs it accepts.

Standard library only, so configuration can check a URL before anything is loaded.
"""

from __future__ import annotations

import urllib.parse


def check_api_url(url: str, option: str = "judge_url") -> None:
    """Raise ``ValueError`` ("<option>: ...") unless ``url`` is ``http(s)://host...`` without a
    user name or password: a password there would be written with the results and is not sent
    as credentials (the key comes from an environment variable), and other schemes (``file:``)
    would read local files."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None
    if parts.username is not None or parts.password is not None:
        # not echoed: it may hold a password
        raise ValueError(
            f"{option}: must not hold a user name or password (it would be saved with the results, and is "
            "not sent as credentials); put the API key in the environment variable named by --judge-key-env"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{option}: must be an http:// or https:// URL with a host, got {url!r}")
