"""What the serving API accepts: its size limits, its unknown-id errors, and per-request checks of a batch."""

from __future__ import annotations

from typing import Any

MAX_K = 100  #: most items one recommendation returns
MAX_HISTORY = 200  #: most items an explicit history may hold
MAX_CANDIDATES = 1000  #: most candidates one ranking request may hold


class InvalidRequest(ValueError):
    """A request the API refuses for what it asks (a bad value), as opposed to a fault of the server."""


class UnknownUser(KeyError):
    """A user id the model was not trained on, asked for without a history."""

    def __init__(self, user: Any, message: str | None = None):
        self.user = user
        self.message = message or (
            f"unknown user {user!r}: not among the model's training users; "
            "pass a history (items the user interacted with) to serve a new user"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


class UnknownItem(KeyError):
    """An item id that is not in the model's catalogue."""

    def __init__(self, item: Any, where: str = "item"):
        self.item = item
        self.message = f"unknown {where} {item!r}: not in the model's catalogue"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def broadcast(value, n: int, name: str) -> list:
    """`value` as one entry per request: a list of n as it is, anything else repeated n times."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} requests")
        return list(value)
    return [value] * n


def check_each(n: int, check, return_exceptions: bool) -> tuple[list, list[int], list]:
    """Run `check(j)` for every request j of a batch.

    Returns (results with a failed request's exception in its place, indices that passed, their checked
    values). A ValueError of a check is the request's fault and becomes an `InvalidRequest`; without
    `return_exceptions` the first KeyError/InvalidRequest is raised.
    """
    results: list = [None] * n
    ok: list[int] = []
    values: list = []
    for j in range(n):
        try:
            value = check(j)
        except (KeyError, ValueError) as e:
            if isinstance(e, ValueError) and not isinstance(e, InvalidRequest):
                e = InvalidRequest(str(e))
            if not return_exceptions:
                raise e from None
            results[j] = e
            continue
        ok.append(j)
        values.append(value)
    return results, ok, values
