"""``CredentialAuth``: httpx authentication with the credential of the running guarded call;
``tls_context``: the TLS settings of the HTTP clients toolguard builds itself."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Generator

import httpx

from .context import current_credential

__all__ = ["CredentialAuth", "tls_context"]


class CredentialAuth(httpx.Auth):
    """Sets ``Authorization: Bearer <credential>`` from :func:`toolguard.current_credential`.

    Use it inside a guarded tool: ``httpx.Client(auth=tg.CredentialAuth())``. Outside a guarded
    call it raises :class:`toolguard.CredentialError` rather than send an unauthenticated request.
    """

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {current_credential().token}"
        yield request


@functools.cache
def tls_context(*, trust_env: bool = True) -> ssl.SSLContext:
    """The TLS settings of httpx's default client: certificates verified against certifi's CA
    bundle, or (``trust_env``) the ``SSL_CERT_FILE``/``SSL_CERT_DIR`` of the environment as
    httpx reads them. Built once per process and shared by the clients toolguard builds (a token
    broker's, a revocation feed's, with httpx's ``trust_env`` of that client): built per client,
    they read the whole CA bundle each time (~20 ms of CPU). Set those variables before the
    first client is built; a client passed in (``client=``) keeps its own settings."""
    return httpx.create_ssl_context(trust_env=trust_env)
