"""The engine (torch, transformers, db.runner), imported by whichever worker thread needs it first.

Two threads importing torch at once can fail with "partially initialized module" (each holds its own
modules' import locks, and the import graph has cycles): the start-up warm-up, a run started at once with
x and the Setup check all import it, so they take turns."""

import threading

_LOCK = threading.Lock()


def load() -> None:
    with _LOCK:
        import harmmed_tui.analysis.ray_cluster  # noqa: F401
        import harmmed_tui.db.runner  # noqa: F401
