"""Keys as a person presses them in the explorer: the pane load each key started (a thread worker) has ended,
and its message is drawn, before the next key. (Loads that follow a run once a second are not waited for.)"""


async def settled(pilot, timeout: float = 20.0) -> None:
    await pilot.pause()
    started = [w for w in pilot.app.workers if w.group == "pane" and not w.is_finished]
    for _ in range(int(timeout / 0.01)):
        if all(w.is_finished for w in started):
            await pilot.pause()
            return
        await pilot.pause(0.01)
    raise AssertionError("a pane's load did not end")


async def press(pilot, *keys: str) -> None:
    for key in keys:
        await pilot.press(key)
        await settled(pilot)
