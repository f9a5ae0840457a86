"""Rows a test expects in the store: `Store.member()` and `Store.pool()` answer None for a missing
row, these fail the test saying which row is missing (and give mypy a non-optional type)."""

from __future__ import annotations

from scaler.store import Member, Pool, Store


def member(store: Store, member_id: str) -> Member:
    found = store.member(member_id)
    assert found is not None, f"member {member_id} is not in the store"
    return found


def pool(store: Store, name: str) -> Pool:
    found = store.pool(name)
    assert found is not None, f"pool {name} is not in the store"
    return found
