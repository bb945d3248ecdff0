"""What the run worker tells the screens."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class RunEnded(Message):
    run_id: int | None
    status: str
    error: str | None = None  # shown in a dialog
    note: str | None = None  # said in a notification instead of the status (a job cancelled early)


class StoreChanged(Message):
    """The store changed (another connection committed), or a job is live (its clock and ETA move): posted by
    the app's one watcher to the screen in front, at most once a second; screens below catch up when they
    come back. Pending ones coalesce."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StoreChanged)
