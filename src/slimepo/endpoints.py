"""The HTTP APIs slimepo talks to (a judge, an inference server): which URLs it accepts, and
how a request goes out (no redirect followed, the key sent only to the URL given).

Standard library only, so configuration can check a URL before anything is loaded.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


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
        key_env = "--" + option.removesuffix("_url").replace("_", "-") + "-key-env"
        raise ValueError(
            f"{option}: must not hold a user name or password (it would be saved with the results, and is "
            f"not sent as credentials); put the API key in the environment variable named by {key_env}"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{option}: must be an http:// or https:// URL with a host, got {url!r}")


#: HTTP statuses worth retrying besides 5xx: request timeout, rate limit.
RETRY_STATUSES = (408, 429)


class RetryableError(Exception):
    """A failure a later attempt may not repeat: network, timeout, HTTP 408/429/5xx."""


class RefusedError(Exception):
    """A reply no retry changes: another HTTP error, or a redirect (never followed)."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: the 3xx reaches :func:`post_json` as an ``HTTPError``."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


def no_redirects_opener() -> urllib.request.OpenerDirector:
    """An opener that follows no redirect: one would re-send the ``Authorization`` header to another
    host and turn the POST into a body-less GET."""
    return urllib.request.build_opener(_RefuseRedirects)


def post_json(opener: urllib.request.OpenerDirector, url: str, body: bytes, api_key: str | None, timeout: float,
              *, key: str, flag: str) -> bytes:
    """POST ``body`` (JSON) to ``url`` with ``Bearer api_key`` when there is one; the reply's bytes.

    Raises :class:`RefusedError` for a redirect (naming its target; ``key`` and ``flag`` name the
    credential and the option in the message) or an HTTP error no retry changes, and
    :class:`RetryableError` for network errors, timeouts and HTTP 408/429/5xx.
    """
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if 300 <= error.code < 400:
            location = error.headers.get("Location")
            target = urllib.parse.urljoin(url, location) if location else "an unnamed address"
            raise RefusedError(f"HTTP {error.code}: refusing to follow a redirect to {target}: slimepo never "
                               f"forwards the {key}; point {flag} at the final address") from error
        detail = f"HTTP {error.code}: {error.read()[:200].decode(errors='replace')}"
        if error.code >= 500 or error.code in RETRY_STATUSES:
            raise RetryableError(detail) from error
        raise RefusedError(detail) from error
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        raise RetryableError(f"{type(error).__name__}: {error}") from error
