"""The neurons of one layer, or the top neurons across layers (`draw_top`), a page of PAGE at a time, with
their exact IE where atp verified them, recurrence over pairs, gate-check rank and generation flips."""

from __future__ import annotations

from harmmed_tui.db import export, queries
from harmmed_tui.tui.widgets import Table


def _rows(screen, t: Table, rows, checks, with_layer: bool) -> None:
    store = screen.app.store
    verified = screen.method == "atp"
    ranked = checks[0]["neurons"][checks[0]["spec"]["groups"][-1]] if checks else []
    # each neuron's rank in the newest gate check's widest group (the sets its curve ablated)
    gated = {n: i + 1 for i, n in enumerate(map(tuple, ranked))}
    recur = export.recurrence(store, screen.run_id, screen.method)
    flips = {}
    for layer in {r[0] for r in rows}:
        for (module, pos, unit), f in queries.generation_flips(
            store, screen.run_id, layer, screen.pair, screen.category
        ).items():
            if module == "neuron":
                flips[(layer, pos, unit)] = f
    first = screen.page * screen.PAGE
    name = screen.effect.upper()
    columns = [
        "#",
        *(["layer"] if with_layer else []),
        "neuron",
        "pos",
        f"{name} ({screen.method})",
        f"{name}/TE",
    ]
    columns += ["exact"] if verified else []
    columns += ["n", "recur", "gate"] + (["flips"] if flips else [])
    for col in columns:
        t.add_column(col, key=col)
    for i, (layer, neuron, pos, ie, exact, n, share) in enumerate(rows):
        cells = [str(first + i + 1), *([str(layer)] if with_layer else []), str(neuron)]
        cells += [
            "*" if pos is None else str(pos),
            f"{ie:+.4f}",
            "" if share is None else f"{share:+.3f}",
        ]
        cells += [f"{exact:+.4f}" if exact is not None else ""] if verified else []
        cells += [str(n), str(recur.get((layer, neuron), 0))]
        cells.append(f"#{gated[(layer, neuron)]}" if (layer, neuron) in gated else "")
        if flips:  # of the pairs whose patched answer was generated: how many flipped
            f = flips.get((layer, pos, neuron))
            cells.append(f"{f[0]}/{f[1]}" if f else "")
        t.add_row(*cells, key=f"{layer}:{neuron}")
    layer = None if with_layer else screen.focus_layer
    total = queries.neuron_count(
        store, screen.run_id, layer, screen.pair, screen.method, screen.category, screen.filter_text
    )
    pages = max(1, -(-total // screen.PAGE))
    screen.legend(
        f"page {screen.page + 1} of {pages} ([ ]) · recur: in how many pairs' top 20 · gate: gate-check rank"
    )


def _page(screen, layer: int | None) -> list[tuple]:
    """The page of neurons in front, of one layer or (None) of every layer, by the effect in front."""
    return queries.top_neurons(
        screen.app.store,
        screen.run_id,
        layer,
        screen.pair,
        screen.method,
        screen.PAGE,
        screen.page * screen.PAGE,
        screen.category,
        screen.effect,
        screen.filter_text,  # (filtered in SQL, across every page)
    )


def draw(screen, t: Table, plt, te: float | None, checks) -> None:
    first = screen.page * screen.PAGE
    rows = _page(screen, screen.focus_layer)
    _rows(screen, t, rows, checks, with_layer=False)
    name = screen.effect.upper()
    if rows:
        plt.hist([r[3] for r in rows], bins=30)
        plt.title(f"L{screen.focus_layer} {name}, #{first + 1}-{first + len(rows)}")
        plt.xlabel(name)
    else:
        plt.title("no neuron rows")


def draw_top(screen, t: Table, plt, te: float | None, checks) -> None:
    first = screen.page * screen.PAGE
    rows = _page(screen, None)
    _rows(screen, t, rows, checks, with_layer=True)
    if rows:
        layers = sorted({r[0] for r in rows})
        plt.bar([str(layer) for layer in layers], [sum(r[0] == layer for r in rows) for layer in layers])
        plt.title(f"layers of #{first + 1}-{first + len(rows)}")
        plt.xlabel("layer")
    else:
        plt.title("no neuron rows")
