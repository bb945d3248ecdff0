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
