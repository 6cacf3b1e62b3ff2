"""The worker's Lever clients: one per configured account, made when first used.

A worker with a thousand configured accounts and no candidates holds no Lever
client at all: each ``httpx`` client (its connection pool and TLS context) costs
memory, so it is made on the account's first Lever call and kept. A reload
(``update``) keeps the clients of accounts whose Lever settings did not change,
and retires the others: a retired client is closed ``retire_after`` seconds
later, so a call already using it finishes normally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

from pylever.clients.lever import LeverClient
from pylever.config.file import Account

ClientFactory = Callable[[Account], LeverClient]
RETIRE_AFTER = 60.0  # seconds: longer than any one Lever call (the clients time out after 10 s)


def activity_client(account: Account, *, rate: float | None = None) -> LeverClient:
    """One attempt per call (Temporal retries). The server's per-account limit on the
    shared queue is the first guard; the in-process bucket, at the account's own rate
    (``rate`` overrides it), is the second, for calls that make two requests."""
    return LeverClient(
        account.lever_api_url,
        account.lever_api_key.get_secret_value(),
        max_attempts=1,
        rate=account.lever_requests_per_second if rate is None else rate,
    )


def _lever_settings(account: Account) -> tuple[str, str, float]:
    return (
        account.lever_api_url,
        account.lever_api_key.get_secret_value(),
        account.lever_requests_per_second,
    )


class LeverAccounts:
    """``get(account_id)``: the account's client, or None when it is not configured."""

    def __init__(
        self,
        accounts: Iterable[Account],
        factory: ClientFactory = activity_client,
        *,
        retire_after: float = RETIRE_AFTER,
    ) -> None:
        self._accounts = {a.id: a for a in accounts}
        self._factory = factory
        self._clients: dict[str, LeverClient] = {}
        self._retire_after = retire_after
        self._retiring: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"LeverAccounts(accounts={len(self._accounts)}, clients={len(self._clients)})"

    def __iter__(self) -> Iterator[str]:
        return iter(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._accounts

    @property
    def clients_made(self) -> int:
        return len(self._clients)

    def get(self, account_id: str) -> LeverClient | None:
        client = self._clients.get(account_id)
        if client is None:
            account = self._accounts.get(account_id)
            if account is None:
                return None
            client = self._clients[account_id] = self._factory(account)
        return client

    def update(self, accounts: Iterable[Account]) -> None:
        """The configuration after a reload: new accounts are known at once, changed
        ones get a new client on their next call, removed ones are unknown."""
        new = {a.id: a for a in accounts}
        for account_id in list(self._clients):
            account = new.get(account_id)
            if account is None or _lever_settings(account) != _lever_settings(
                self._accounts[account_id]
            ):
                self._retire(self._clients.pop(account_id))
        self._accounts = new

    def _retire(self, client: LeverClient) -> None:
        async def close_later() -> None:
            try:
                await asyncio.sleep(self._retire_after)
            finally:
                await client.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        for task in list(self._retiring):
            task.cancel()  # close_later closes its client in ``finally``
        await asyncio.gather(*self._retiring, return_exceptions=True)
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


__all__ = ["RETIRE_AFTER", "LeverAccounts", "activity_client"]
