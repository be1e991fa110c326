"""``CredentialAuth``: httpx authentication with the credential of the running guarded call."""

from __future__ import annotations

from collections.abc import Generator

import httpx

from .context import current_credential

__all__ = ["CredentialAuth"]


class CredentialAuth(httpx.Auth):
    """Sets ``Authorization: Bearer <credential>`` from :func:`toolguard.current_credential`.

    Use it inside a guarded tool: ``httpx.Client(auth=tg.CredentialAuth())``. Outside a guarded
    call it raises :class:`toolguard.CredentialError` rather than send an unauthenticated request.
    """

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {current_credential().token}"
        yield request
