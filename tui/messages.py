"""What the run worker tells the screens."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class RunProgress(Message):
    done: int
    total: int

    def can_replace(self, message: Message) -> bool:  # only the newest progress matters
        return isinstance(message, RunProgress)


@dataclass
class RunEnded(Message):
    run_id: int | None
    status: str
    error: str | None = None
