"""A verifier's revocation source backed by the store (``toolguard.engine`` re-exports it)."""

from __future__ import annotations

from collections.abc import Sequence

from .protocol import RevocationChecks

__all__ = ["StoreRevocations"]


class StoreRevocations:
    """The store's revocations, as a verifier's revocation source (fail closed on errors).

    A credential is revoked when the store says so, and also when its task's end (with the
    task's revocation) is still waiting to be written by this process
    (:meth:`~toolguard.store.protocol.RevocationChecks.pending_ends`).
    """

    def __init__(self, store: RevocationChecks) -> None:
        self.store = store
        where = getattr(store, "path", None)
        self.source = "the revocation store" + ("" if where is None else f" {where}")
        """What it reads, in words (the verifier's fail-closed message names it; a PostgreSQL
        store's path is its URL without the password)."""

    def revoked_reason(
        self, *, jti: str, task_id: str, identity: str, chain: Sequence[str], issued_at: float = 0.0
    ) -> str | None:
        pending = self.store.pending_ends()
        if pending and (task_id in pending or not pending.isdisjoint(chain)):
            return "task ended (its revocation is not yet written to the store)"
        return self.store.revoked_reason(
            jti=jti, task_id=task_id, identity=identity, chain=chain, issued_at=issued_at
        )
