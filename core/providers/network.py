"""Which proxy a request to an endpoint goes through: the environment's or the endpoint's own.

Users in China often run Clash or V2Ray, which set `ALL_PROXY=socks5://127.0.0.1:7890` (and
HTTP(S)_PROXY). We decide the proxy ourselves, once per endpoint, and hand it to the httpx
client each SDK gets, with `trust_env=False`: so loopback (a local Ollama, a local vLLM) is
never sent through the proxy, `NO_PROXY` is honoured for every client the same way, and a
SOCKS proxy works because `socksio` (httpx[socks]) is installed.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlparse


def _env(env: Mapping[str, str], name: str) -> str:
    return (env.get(name.upper()) or env.get(name.lower()) or "").strip()


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bypasses_proxy(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY (curl's rules: "*", names with or without a leading dot, which match
    their subdomains too, host:port, IP addresses and CIDR ranges) names this host."""
    host = host.strip("[]").lower()
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if ":" in entry and not entry.startswith("[") and entry.count(":") == 1:
            entry, _, entry_port = entry.partition(":")
            if port is not None and entry_port != str(port):
                continue
        entry = entry.strip("[]")
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        entry = entry.lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def proxy_for(
    url: str, endpoint_proxy: str | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The proxy URL a request to `url` goes through, or None for a direct connection.

    Loopback and NO_PROXY hosts are always direct; else the endpoint's own `proxy`, else
    HTTPS_PROXY / HTTP_PROXY (by the URL's scheme), else ALL_PROXY."""
    env = os.environ if env is None else env
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if not host or is_loopback(host) or bypasses_proxy(host, parsed.port, _env(env, "no_proxy")):
        return None
    if endpoint_proxy and endpoint_proxy.strip():
        return endpoint_proxy.strip()
    by_scheme = _env(env, "https_proxy" if parsed.scheme == "https" else "http_proxy")
    return by_scheme or _env(env, "all_proxy") or None
