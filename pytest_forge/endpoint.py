"""Where the bench sends requests, and the one place URLs are made safe to send and to show.

A server is either one we booted or one given with --forge-endpoint. Credentials in a URL
(`https://user:password@host`, as curl, vLLM's bench and the openai SDK accept them) are
split off at once: the URL that is kept, logged and reported never carries them; they
travel as an HTTP Basic auth header. Any credential (an API key, or user:password) travels
only over https, or over plain http to a loopback host (127.0.0.0/8, ::1, localhost).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_forge.errors import ForgeError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Credentials",
    "Endpoint",
    "InsecureCredentialsError",
    "is_loopback",
    "parse_endpoint",
    "redact_text",
    "redact_url",
    "require_secure_transport",
    "split_credentials",
]

ENDPOINT_KEY_ENV = "FORGE_ENDPOINT_API_KEY"
# Environment variables holding keys pytest-forge sends: their values are scrubbed from
# any text redact_text() cleans (a traceback, a captured log).
SECRET_ENV_VARS = (
    ENDPOINT_KEY_ENV,
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENROUTER_API_KEY",
    # The other agent providers' keys (tune/agent_spec.py PROVIDERS; a test keeps them in step).
    "TOGETHER_API_KEY",
    "GROQ_API_KEY",
    "FIREWORKS_API_KEY",
    "DEEPINFRA_API_KEY",
    "MISTRAL_API_KEY",
    "DEEPSEEK_API_KEY",
    "CEREBRAS_API_KEY",
    "XAI_API_KEY",
)
MASK = "***"

# The userinfo of a URL: after "scheme://", up to the last "@" before the path, query or
# fragment starts (a password may hold a raw "@"; "/", "?" and "#" end the authority).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s'\"<>]*@")
# An Authorization header value, as a repr of headers or a request dump shows it.
_AUTH_VALUE = re.compile(r"(?i)\b(?P<kind>basic|bearer)(?P<sep>\s+)[A-Za-z0-9._~+/=\-]{4,}")


class InsecureCredentialsError(ForgeError):
    """A credential would travel over plain http to a host that is not this machine."""


@dataclass(frozen=True)
class Credentials:
    """user:password taken out of a URL; sent as HTTP Basic auth, never shown."""

    username: str = field(repr=False)
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials({MASK})"

    def auth(self) -> httpx.BasicAuth:
        """The HTTP Basic auth httpx sends for these credentials."""
        import httpx  # not at the top: the pytest plugin imports this module at load

        return httpx.BasicAuth(self.username, self.password)


def redact_url(url: str) -> str:
    """`url` with any user:password replaced by `***`: the only form shown anywhere."""
    if "@" not in url:
        return url
    if "://" not in url:
        # Not a URL we can parse (e.g. a scheme was forgotten): hide all before the last '@'.
        head, _, tail = url.rpartition("@")
        return f"{MASK}@{tail}" if head else url
    scheme, _, rest = url.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority and "@" not in rest[len(authority) :]:
        return f"{scheme}://{MASK}@{rest[authority.rindex('@') + 1 :]}"
    # An '@' after the authority: a password with a raw '/', '?' or '#' (not a valid URL,
    # or a different one) may sit before it. Hide everything up to the last '@'.
    return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"


def redact_text(text: str) -> str:
    """`text` (a traceback, a log) with every secret it may hold masked.

    Masks URL credentials, Authorization header values and the values of the key
    variables in SECRET_ENV_VARS.
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m['kind']}{m['sep']}{MASK}", text)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 8:
            text = text.replace(value, MASK)
    return text


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: traffic that never leaves this machine."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_credentials(url: str, option: str = "URL") -> tuple[str, Credentials | None]:
    """`url` without its user:password, and those as Credentials (or None).

    Raises a ForgeError naming `option` (and the redacted URL) when `url` is not an
    http(s) URL with a host.
    """
    shown = redact_url(url)
    # httpx's own message may quote part of a password (e.g. "Invalid port: 'pa'").
    invalid = ForgeError(
        f"{option} {shown}: not a valid URL"
        + (" (percent-encode '/', '?', '#' and '@' in a user:password)" if "@" in url else "")
    )
    rest = url.partition("://")[2]
    if "@" in rest[len(re.split(r"[/?#]", rest, maxsplit=1)[0]) :]:
        # e.g. user:pa/ss@host, where httpx would see host "user" and port "pa"
        raise invalid
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise invalid from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ForgeError(f"{option} {shown}: expected an http:// or https:// URL with a host")
    if not parsed.userinfo:
        return url, None
    clean = str(parsed.copy_with(username=None, password=None))
    return clean, Credentials(parsed.username, parsed.password)


def require_secure_transport(
    url: str, option: str, sending: str, key_env: str | None = None
) -> None:
    """Refuse to send `sending` (a credential's name) over plain http off this machine.

    Plain http is allowed only to a loopback host. The message names `option` and the
    redacted URL; `key_env`, when the credential comes from that variable, is offered as
    the one to unset.
    """
    import httpx

    parsed = httpx.URL(url)
    if parsed.scheme == "https" or is_loopback(parsed.host):
        return
    unset = f", or unset {key_env} if the server needs no key" if key_env else ""
    raise InsecureCredentialsError(
        f"{option} {redact_url(url)}: refusing to send {sending} over plain http to "
        f"{parsed.host}, which is not this machine: use https:// (or a tunnel to a "
        f"loopback address: 127.0.0.1, ::1, localhost){unset}"
    )


@dataclass(frozen=True)
class Endpoint:
    """A server to benchmark: its URL, model and credentials, never shown with secrets."""

    base_url: str  # e.g. "http://127.0.0.1:8000" (no trailing /v1, never user:password)
    model: str | None = None  # None: the bench asks /v1/models
    # Read from the environment by the caller; never written anywhere.
    api_key: str | None = field(default=None, repr=False)
    # True when pytest-forge booted the server (so dev endpoints like /reset_prefix_cache exist)
    managed: bool = False
    # user:password from the URL, sent as HTTP Basic auth
    credentials: Credentials | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The root of every use: no Endpoint keeps credentials in its URL.
        if "@" in self.base_url:
            clean, found = split_credentials(self.base_url, "endpoint")
            if found is not None and self.credentials is not None:
                raise ForgeError(f"endpoint {redact_url(self.base_url)}: credentials given twice")
            object.__setattr__(self, "base_url", clean)
            object.__setattr__(self, "credentials", found or self.credentials)
        if self.api_key and self.credentials:
            raise ForgeError(
                f"endpoint {self.url}: an API key and a user:password would both be the "
                "Authorization header: give one"
            )

    def check_transport(self, option: str = "endpoint") -> None:
        """Before sending: no credential goes over plain http off this machine."""
        if self.api_key or self.credentials:
            require_secure_transport(self.base_url, option, "credentials")

    @property
    def url(self) -> str:
        """The base URL without a trailing slash."""
        return self.base_url.rstrip("/")

    @property
    def auth(self) -> httpx.BasicAuth | None:
        """What httpx sends as the Basic auth header (never part of the URL)."""
        return self.credentials.auth() if self.credentials else None

    @property
    def headers(self) -> dict[str, str]:
        """The bearer header when an API key is set."""
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def parse_endpoint(
    url: str, api_key: str | None, option: str = "--forge-endpoint", key_env: str = ENDPOINT_KEY_ENV
) -> Endpoint:
    """The Endpoint for a user-given URL, checked before anything is sent.

    Raises a ForgeError naming `option` and the redacted URL when the URL is not http(s),
    when it has a user:password and `key_env` is set too, or when a credential would
    travel over plain http off this machine.
    """
    clean, credentials = split_credentials(url.strip(), option)
    shown = redact_url(url.strip())
    if credentials is not None and api_key:
        raise ForgeError(
            f"{option} {shown}: the URL's user:password and {key_env} would both be the "
            f"Authorization header: give one (unset {key_env}, or drop user:password@)"
        )
    if api_key:
        require_secure_transport(clean, option, key_env, key_env)
    if credentials is not None:
        require_secure_transport(clean, option, "the URL's user:password")
    return Endpoint(clean, api_key=api_key or None, credentials=credentials)
