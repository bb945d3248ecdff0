"""The figures a paper prints for this analysis, from a stored run (`harmmed-tui figure`, the HTML report).

Every number drawn is a row of the run's export (db.export.table, db.compare): the figure's `rows` are the
rows it drew, so that what a reader sees and what a spreadsheet holds cannot differ. Publication defaults:
one column of a two-column paper wide, 8 pt text, vector output, the Okabe-Ito palette for lines and
ColorBrewer's RdBu (white at 0) for signed heatmaps, both readable with colour-blind eyes; the caption
(run, model, pairs, metric, method) is in the file's metadata. matplotlib is an optional extra
(`harmmed-tui[figures]`), imported only here and only when a figure is drawn."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs

from harmmed_tui.analysis.sites import LAYER_MODULES, readable
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import compare, export, queries
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.db.visible import plain

KINDS = ("layers", "grid", "neurons", "heads", "gate", "compare")
FILE_TYPES = ("svg", "pdf", "png")
WIDTH_IN = 3.5  # one column of a two-column paper
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
MODULE_LEVEL = ("*", "suffix")  # the module-level site of a run: every position at once, or the suffix
TOP_NEURONS = 20


@dataclass
class Figure:
    figure: object  # a matplotlib Figure
    title: str
    caption: str  # what the figure shows, of which run, model and pairs: in the file's metadata
    rows: list[dict]  # the export rows it drew


def draw(
    store: Store,
    run_id: int,
    kind: str,
    pair: int | None = None,
    by: str = "site",
    module: str = "resid",
    other: int | None = None,
) -> Figure:
    """One figure of a run: `pair` None draws the aggregate over pairs, `by='category'` one line per
    category of the harmful prompts (layers), `module` the grid's, `other` the run compared with."""
    if kind not in KINDS:
        raise StoreError(f"unknown figure '{kind}' (use {', '.join(KINDS)})")
    if (kind == "compare") != (other is not None):
        raise StoreError(
            "a compare figure needs a second run (figure A compare B); other figures take one run"
        )
    if by != "site" and kind != "layers":
        raise StoreError("--by category draws the layers figure (one line per category)")
    mpl, style = _matplotlib()
    with mpl.rc_context(style):
        fig = globals()[f"_{kind}"](mpl, store, run_id, pair, by, module, other)
    # every text drawn is the user's data shown as written: hidden characters as escapes (an SVG with ESC or
    # NUL in it is no well-formed XML), `$` as a dollar sign (text.parse_math off: no mathtext)
    for text in fig.figure.findobj(mpl.text.Text):
        text.set_text(plain(text.get_text(), newlines=False))
    return replace(fig, title=plain(fig.title, False), caption=plain(fig.caption, False))


def save(fig: Figure, path: str) -> None:
    """Write a figure; its type from the file's extension, its caption in the file's metadata."""
    kind = Path(path).suffix.lstrip(".").lower()
    if kind not in FILE_TYPES:
        raise StoreError(f"cannot write a figure as '{Path(path).name}': use a .svg, .pdf or .png file")
    meta = {
        "svg": {"Title": fig.title, "Description": fig.caption, "Date": None, "Creator": "harmmed-tui"},
        "pdf": {"Title": fig.title, "Subject": fig.caption, "CreationDate": None, "Creator": "harmmed-tui"},
        "png": {"Title": fig.title, "Description": fig.caption, "Software": "harmmed-tui"},
    }[kind]
    out = io.BytesIO()
    mpl, style = _matplotlib()
    with mpl.rc_context(style):
        fig.figure.savefig(out, format=kind, metadata=meta, dpi=300, bbox_inches="tight")
    export.write(out.getvalue(), path)


def svg(fig: Figure, prefix: str = "") -> str:
    """The figure as an SVG element to inline in HTML (no XML prolog), each id (and reference to one)
    given `prefix`: a page holding several figures must not hold one id twice."""
    out = io.StringIO()
    mpl, style = _matplotlib()
    with mpl.rc_context(style):
        fig.figure.savefig(
            out, format="svg", metadata={"Title": fig.title, "Date": None}, bbox_inches="tight"
        )
    text = out.getvalue()
    text = text[text.index("<svg") :]
    ids = set(re.findall(r'\bid="([^"]+)"', text))
    return re.sub(r'(\bid="|#)([\w.:-]+)', lambda m: m[1] + prefix + m[2] if m[2] in ids else m[0], text)


def cached_svg(store: Store, run_id: int, kind: str, prefix: str = "") -> tuple[str, str]:
    """(SVG element, caption) of a run's figure (`svg`), drawn once per content: keyed by what the figure is
    drawn from (the database file, the run, its status, end and row count; the gate figure's gate checks) and by the code
    and matplotlib that draw it. A running run's figure is never cached (its rows still change); a cache
    that cannot be written (a read-only home) only costs a redraw."""
    run = store.run(run_id)
    key = None
    if run["status"] != "running":
        matplotlib, _ = _matplotlib()
        sql = "SELECT id FROM gate_checks WHERE run_id = ?"  # (the gate figure's rows)
        checks = [c["id"] for c in store.db.query(sql, [run_id])] if kind == "gate" else []
        content = [store.file_id, run_id, run["status"], run["finished"], run["n_rows"], checks, kind, prefix]
        content += [_CODE, matplotlib.__version__]
        key = hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()
        path = Path(platformdirs.user_cache_dir("harmmed-tui")) / "figures" / f"{key}.json"
        with contextlib.suppress(OSError, ValueError):
            return tuple(json.loads(path.read_text()))
    fig = draw(store, run_id, kind)
    drawn = svg(fig, prefix), fig.caption
    if key is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(drawn))
            temporary.replace(path)  # (whole or not at all: a reader never sees half a figure)
    return drawn


# the code that draws the figures: a changed release draws them again
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


# vector text stays text (searchable, selectable); fixed hash salt: the same run gives the same file
_STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "text.parse_math": False,
    "svg.hashsalt": "harmmed-tui",
    "pdf.fonttype": 42,
}


def _matplotlib():
    """matplotlib, and the publication style. Figures are made without pyplot: nothing keeps them once
    drawn (an explorer draws many in a day), and nothing opens a display (over SSH)."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError:
        raise StoreError("figures need matplotlib: pip install 'harmmed-tui[figures]'") from None
    from cycler import cycler

    return matplotlib, {**_STYLE, "axes.prop_cycle": cycler(color=OKABE_ITO)}


def _about(
    store: Store, run_id: int, what: str, pair: int | None, shown: str | None = None
) -> tuple[str, str]:
    """(title, caption) of a figure of a run: of one pair, the mean over its pairs, or what `shown` says."""
    run = store.run(run_id)
    spec = RunSpec.from_json(run["spec"])
    pairs = store.pairs(run_id)
    shown = shown or (f"pair {pair}" if pair is not None else f"mean over {len(pairs)} pairs")
    title = f"{what} ({shown})"
    caption = (
        f"harmmed-tui run {run_id}: {what}, {shown}; model {queries.model_label(run['model'])}; "
        f"{len(pairs)} pairs; metric {spec.metric}; method {store.run_method(run_id)}"
    )
    return title, caption


# the export tables read by figures drawn together (a report's four): each read once, not once per figure
_TABLES: ContextVar[dict | None] = ContextVar("tables", default=None)


@contextmanager
def drawn_together():
    """Figures drawn inside it share their export tables (the layers figure and the grid read one)."""
    token = _TABLES.set({})
    try:
        yield
    finally:
        _TABLES.reset(token)


def _table(store: Store, run_id: int, level: str, **options) -> list[dict]:
    """export.table, read once per `drawn_together` (rows are read-only here: figures copy what they
    change)."""
    memo = _TABLES.get()
    if memo is None:
        return export.table(store, run_id, level, **options)
    key = (run_id, level, *sorted(options.items()))
    if key not in memo:
        memo[key] = export.table(store, run_id, level, **options)
    return memo[key]


def _figure(mpl, height: float, ncols: int = 1, nrows: int = 1):
    fig = mpl.figure.Figure(figsize=(WIDTH_IN, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _from_end(row: dict) -> dict:
    """A per-pair row's position counted from the end (-1 the last token), as aggregated rows have it."""
    p = row["position"]
    return {**row, "position": p - row["seq_len"]} if isinstance(p, int) and p >= 0 else row


def _layer_rows(store: Store, run_id: int, pair: int | None, by: str) -> tuple[list[dict], str, str]:
    """The layer level's rows at the run's module-level site (else its last position), the value drawn
    (ie_share over pairs, ie_norm for one pair) and the site's name."""
    if pair is None:
        rows, value = _table(store, run_id, "layer", aggregated=True, by=by), "ie_share"
    else:
        rows = [
            _from_end(r)
            for r in export.effect_rows(store, run_id, "layer", seq_len=True)
            if r["pair"] == pair
        ]
        if not rows:
            raise StoreError(f"run {run_id} has no layer rows of pair {pair}")
        value = "ie_norm"
    site = [r for r in rows if r["position"] in MODULE_LEVEL]
    name = f"'{site[0]['position']}'" if site else "the last position"
    site = site or [r for r in rows if r["position"] == -1]
    if not site:
        raise StoreError(f"run {run_id} has no resid/attn/mlp rows: nothing to draw by layer")
    return site, value, name


def _layers(mpl, store, run_id, pair, by, module, other) -> Figure:
    rows, value, site = _layer_rows(store, run_id, pair, by)
    te = _mean_te(store, run_id, by)
    modules = [m for m in LAYER_MODULES if any(r["module"] == m for r in rows)]
    panels = modules if by == "category" else ["all"]
    fig, axes = _figure(mpl, 1.9 * len(panels), 1, len(panels))
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        groups = sorted({r["category"] for r in rows}) if by == "category" else modules
        drawn = []  # (line, label), given to the legend as such: a label `_x` would be hidden as `_nolegend_`
        for group in groups:
            key = "category" if by == "category" else "module"
            mine = sorted(
                (r for r in rows if r[key] == group and (by != "category" or r["module"] == panel)),
                key=lambda r: r["layer"],
            )
            if not mine or mine[0][value] is None:
                continue
            x = [r["layer"] for r in mine]
            line = ax.plot(x, [r[value] for r in mine], marker="o", markersize=2.5, label=group)[0]
            drawn.append((line, group))
            if pair is None and (scale := te.get(group if by == "category" else None)):
                # the band: the mean IE's 95% bootstrap CI on the same scale (divided by the mean TE)
                ax.fill_between(
                    x,
                    [r["ci_low"] / scale for r in mine],
                    [r["ci_high"] / scale for r in mine],
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
        ax.axhline(0, color="0.6", linewidth=0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)  # layers are whole
        ax.set_ylabel("IE / TE")
        ax.set_title(f"{panel} at {site}" if by == "category" else f"by layer, at {site}", loc="left")
        ax.legend(*zip(*drawn, strict=True), frameon=False, ncols=min(3, len(groups)))
    axes[-1, 0].set_xlabel("layer")
    title, caption = _about(store, run_id, "IE/TE per layer", pair)
    return Figure(fig, title, caption + (", 95% CI bands" if pair is None else ""), rows)


def _mean_te(store: Store, run_id: int, by: str) -> dict[str | None, float]:
    """The mean TE of the run's pairs (key None), and of each category's with by='category'."""
    pairs = [p for p in store.pairs(run_id) if p["te"] is not None]
    groups = {None: pairs} | (
        {c: [p for p in pairs if p["category"] == c] for c in {p["category"] for p in pairs}}
        if by == "category"
        else {}
    )
    return {k: sum(p["te"] for p in g) / len(g) for k, g in groups.items() if g}


def _grid(mpl, store, run_id, pair, by, module, other) -> Figure:
    if module not in LAYER_MODULES:
        raise StoreError(f"the grid is of one module: {', '.join(LAYER_MODULES)} (got '{module}')")
    if pair is None:
        rows, value = _table(store, run_id, "layer", aggregated=True, by="site"), "ie_share"
    else:
        rows = [
            _from_end(r)
            for r in export.effect_rows(store, run_id, "layer", seq_len=True)
            if r["pair"] == pair
        ]
        value = "ie_norm"
    rows = [
        r for r in rows if r["module"] == module and isinstance(r["position"], int) and r[value] is not None
    ]
    if not rows:
        raise StoreError(f"run {run_id} has no {module} rows at single positions: nothing to draw as a grid")
    layers = sorted({r["layer"] for r in rows})
    positions = sorted({r["position"] for r in rows})
    cell = {(r["layer"], r["position"]): r[value] for r in rows}
    grid = [[cell.get((layer, p), math.nan) for p in positions] for layer in layers]
    top = max((abs(v) for v in cell.values()), default=1.0) or 1.0
    tokens = {r["position"]: r["token"] for r in rows}
    fig, axes = _figure(mpl, 1.2 + 0.1 * len(layers))
    ax = axes[0, 0]
    # a mesh of cells, not an image: vector in svg and pdf, a cell per (layer, position)
    image = ax.pcolormesh(grid, cmap="RdBu_r", vmin=-top, vmax=top)
    ticks = [i + 0.5 for i in range(len(positions))]
    ax.set_xticks(ticks, [_token_label(tokens[p], p) for p in positions], rotation=90)
    ax.set_yticks([i + 0.5 for i in range(len(layers))], [str(layer) for layer in layers])
    ax.set_ylabel("layer")
    ax.set_title(f"{module}: IE / TE at each position", loc="left")
    fig.colorbar(image, ax=ax, label="IE / TE", shrink=0.8)
    title, caption = _about(store, run_id, f"{module} IE/TE by layer and position", pair)
    return Figure(fig, title, caption, rows)


def _token_label(token: str | None, position: int) -> str:
    """A position's tick: its token as a person reads it (pairs that differ there: the position)."""
    return readable(token)[:12] if token else str(position)


def _neurons(mpl, store, run_id, pair, by, module, other) -> Figure:
    method = store.run_method(run_id)
    if pair is None:
        # the top sites chosen in SQL, and only theirs bootstrapped (not every neuron of the run)
        rows = _table(store, run_id, "neuron", aggregated=True, top=TOP_NEURONS, method=method)
        value = "ie_mean"
    else:
        rows = [
            r for r in export.table(store, run_id, "neuron") if r["pair"] == pair and r["method"] == method
        ]
        value = "ie"
    rows = sorted(rows, key=lambda r: -abs(r[value]))[:TOP_NEURONS]
    if not rows:
        raise StoreError(f"run {run_id} has no neuron rows (run it with --modules including neuron)")
    fig, axes = _figure(mpl, 0.8 + 0.13 * len(rows))
    ax = axes[0, 0]
    y = list(range(len(rows)))[::-1]  # the strongest on top
    colours = [OKABE_ITO[1] if r[value] > 0 else OKABE_ITO[0] for r in rows]
    errors = None
    if pair is None:
        errors = [[r[value] - r["ci_low"] for r in rows], [r["ci_high"] - r[value] for r in rows]]
    ax.barh(y, [r[value] for r in rows], color=colours, xerr=errors, error_kw={"linewidth": 0.6})
    ax.set_yticks(y, [f"L{r['layer']} n{r['neuron']} @{r['position']}" for r in rows])
    ax.axvline(0, color="0.6", linewidth=0.5)
    ax.set_xlabel(f"IE ({method})" + (", mean with 95% CI" if pair is None else ""))
    ax.set_title(f"top {len(rows)} neurons by |IE|", loc="left")
    title, caption = _about(store, run_id, f"top {len(rows)} MLP neurons across layers", pair)
    return Figure(fig, title, caption, rows)


def _heads(mpl, store, run_id, pair, by, module, other) -> Figure:
    method = store.run_method(run_id)
    if pair is None:
        rows, value = export.table(store, run_id, "head", aggregated=True), "ie_share"
    else:
        rows = [
            _from_end(r) for r in export.effect_rows(store, run_id, "head", seq_len=True) if r["pair"] == pair
        ]
        value = "ie_norm"
    rows = [r for r in rows if r["method"] == method and r[value] is not None]
    site = [r for r in rows if r["position"] in MODULE_LEVEL] or [r for r in rows if r["position"] == -1]
    if not site:
        raise StoreError(f"run {run_id} has no head rows (run it with --modules including head)")
    where = f"'{site[0]['position']}'" if site[0]["position"] in MODULE_LEVEL else "the last position"
    layers, heads = sorted({r["layer"] for r in site}), sorted({r["head"] for r in site})
    cell = {(r["layer"], r["head"]): r[value] for r in site}
    grid = [[cell.get((layer, h), math.nan) for h in heads] for layer in layers]
    top = max(abs(v) for v in cell.values()) or 1.0
    fig, axes = _figure(mpl, 1.2 + 0.12 * len(layers))
    ax = axes[0, 0]
    mesh = ax.pcolormesh(grid, cmap="RdBu_r", vmin=-top, vmax=top)
    ax.set_xticks([i + 0.5 for i in range(len(heads))], [str(h) for h in heads])
    ax.set_yticks([i + 0.5 for i in range(len(layers))], [str(layer) for layer in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"IE / TE of each head, at {where} ({method})", loc="left")
    fig.colorbar(mesh, ax=ax, label="IE / TE", shrink=0.8)
    title, caption = _about(store, run_id, "IE/TE of every attention head", pair)
    return Figure(fig, title, caption, site)


def _gate(mpl, store, run_id, pair, by, module, other) -> Figure:
    if pair is not None:
        raise StoreError("the gate curve is of the held-out pairs together: drop --pair")
    curve = export.table(store, run_id, "gate", aggregated=True)
    if not curve:
        raise StoreError(f"run {run_id} has no gate check (harmmed-tui gate RUN, or a in the explorer)")
    newest = max(r["check_id"] for r in curve)
    rows = [r for r in curve if r["check_id"] == newest]
    # the direction arms (one direction, not K neurons) are levels across every panel, beside the neurons
    direction = next((r for r in rows if r["group"] == "direction"), None)
    groups = list(dict.fromkeys(r["group"] for r in rows if r["group"] != "direction"))
    fig, axes = _figure(mpl, 3.0, len(groups), 2)
    measures = (("removed", "share of TE removed"), ("flipped", "refusals flipped"))
    for col, group in enumerate(groups):
        mine = sorted((r for r in rows if r["group"] == group), key=lambda r: r["k"])
        for row_i, (measure, label) in enumerate(measures):
            ax = axes[row_i, col]
            for arm, colour in (("top", OKABE_ITO[1]), ("random", OKABE_ITO[0])):
                points = [r for r in mine if r[f"{arm}_{measure}"] is not None]
                if not points:
                    continue
                k = [r["k"] for r in points]
                ys = [r[f"{arm}_{measure}"] for r in points]
                ax.plot(
                    k,
                    ys,
                    marker="o",
                    markersize=2.5,
                    color=colour,
                    label="top K" if arm == "top" else "random K",
                )
                if arm == "random":  # the random sets' spread over seeds
                    sd = [r[f"random_{measure}_sd"] or 0.0 for r in points]
                    ax.fill_between(
                        k,
                        [a - b for a, b in zip(ys, sd, strict=True)],
                        [a + b for a, b in zip(ys, sd, strict=True)],
                        color=colour,
                        alpha=0.2,
                        linewidth=0,
                    )
            for arm, style in (("top", "--"), ("random", ":")):
                if direction is not None and direction[f"{arm}_{measure}"] is not None:
                    ax.axhline(
                        direction[f"{arm}_{measure}"],
                        color=OKABE_ITO[2],
                        linestyle=style,
                        linewidth=0.8,
                        label="direction" if arm == "top" else "random direction",
                    )
            ax.set_xscale("log")
            ks = sorted({r["k"] for r in mine})
            ax.set_xticks(ks, [str(k) if i % 2 == 0 else "" for i, k in enumerate(ks)], minor=False)
            ax.minorticks_off()
            # 0 to 1 at least, and whatever the lines and bands reach beyond it (a share of TE removed can
            # exceed 1 or fall below 0): never clip what the figure exists to show
            low, high = ax.dataLim.y0, ax.dataLim.y1
            ax.set_ylim(min(-0.05, low - 0.05), max(1.05, high + 0.05))
            if measure == "flipped" and not mine[0]["refused"]:
                ax.text(0.5, 0.5, "0 refusals to flip", transform=ax.transAxes, ha="center", va="center")
            if (
                measure == "removed"
                and mine[0]["te_low"] is not None
                and mine[0]["te_low"] <= 0 <= mine[0]["te_high"]
            ):
                ax.text(
                    0.5, 0.5, "held-out TE's CI spans 0", transform=ax.transAxes, ha="center", va="center"
                )
            if row_i == 0:
                ax.set_title(group, loc="left")
            if col == 0:
                ax.set_ylabel(label)
            if row_i == 1:
                ax.set_xlabel("K neurons ablated")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper right", ncols=2, frameon=False)
    held = f"{rows[0]['pairs']} held-out pairs"
    title, caption = _about(store, run_id, f"gate curve of check {newest}", None, held)
    return Figure(fig, title, caption + "; random: mean over seeds with sd band", rows)


def _compare(mpl, store, run_id, pair, by, module, other) -> Figure:
    rows, r, _ = compare.compare(store, run_id, other)
    fig, axes = _figure(mpl, WIDTH_IN)
    ax = axes[0, 0]
    xs, ys = f"ie_share_{run_id}", f"ie_share_{other}"
    for colour, m in zip(OKABE_ITO, LAYER_MODULES, strict=False):
        mine = [row for row in rows if row["module"] == m]
        if mine:
            ax.scatter([row[xs] for row in mine], [row[ys] for row in mine], s=8, color=colour, label=m)
    values = [row[k] for row in rows for k in (xs, ys)]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], color="0.6", linewidth=0.5, linestyle="--")
    ax.set_xlabel(f"IE / TE, run {run_id}")
    ax.set_ylabel(f"IE / TE, run {other}")
    ax.set_title(f"layer x module cells, Pearson r {'n/a' if r is None else f'{r:.3f}'}", loc="left")
    ax.legend(frameon=False)
    b = store.run(other)
    title, caption = _about(store, run_id, f"IE/TE against run {other}", None)
    caption += (
        f"; run {other}: model {queries.model_label(b['model'])}, {len(store.pairs(other))} pairs; r = {r}"
    )
    return Figure(fig, title, caption, rows)
