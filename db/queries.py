"""The read queries behind the Runs and Explore screens (parameterised SQL; `pair=None` averages over pairs,
or over one category's pairs).

Each reads one method's rows: a run's own method (`exact`, `block` or `atp`); an atp run's exact
verification shows beside its estimates in the neuron pane."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from harmmed_tui.analysis import stats
from harmmed_tui.analysis.sites import LAYER_MODULES
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import jobs
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.db.view import PAGE, Effect, View

RUN_COLUMNS = (
    "id", "status", "model", "started", "mean TE", "pairs", "rows", "modules", "method", "metric", "compute"
)  # fmt: skip


def model_label(model: str) -> str:
    """A model as screens name it: a path by its last part (a GGUF file by its name), a hub id as it is."""
    return Path(model).name or model


def run_cells(run: dict) -> list[str]:
    """One row of the run history (from Store.runs), as the Runs screen and `harmmed-tui runs` show it:
    the model by its last path part, `started` in local time to the minute, compute time as h:mm:ss."""
    spec = RunSpec.from_json(run["spec"])
    te = f"{run['mean_te']:+.3f}" if run["mean_te"] is not None else ""
    started = datetime.fromisoformat(run["started"]).astimezone().strftime("%m-%d %H:%M")
    model = model_label(run["model"])
    compute = _clock(run["compute_s"])
    method = run["method"] or spec.method
    cells = (run["id"], run["status"], model, started, te, run["n_pairs"], run["n_rows"])
    return [*map(str, cells), ",".join(spec.modules), method, spec.metric, compute]


def _clock(seconds: float) -> str:
    """A time as h:mm:ss, as Runs shows a run's compute and a study's stages."""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def history(store: Store) -> list[tuple[str, list[str]]]:
    """The run history as Runs and `harmmed-tui runs` show it, as (key, cells): first the jobs whose run does
    not exist yet (a model loading in any process: key `job:ID`), then every study (key `study:ID`: its
    stage, its two runs' pairs, rows and time) with its runs beneath it (`└ 12`), then every other run (key:
    its id), newest first; a run that a job works on shows the job's stage in its status."""
    live = jobs.live(store)
    working = {j["run_id"]: j for j in live if j["run_id"] is not None}
    rows = []
    for j in live:
        if j["run_id"] is None:
            started = datetime.fromtimestamp(j["stage_started"]).strftime("%m-%d %H:%M")
            status = j["text"] if j["kind"] in ("run", "resume") else f"{j['kind']}: {j['text']}"
            cells = ["…", status, model_label(j["model"]), started]
            rows.append((f"job:{j['id']}", cells + [""] * (len(RUN_COLUMNS) - len(cells))))
    runs = {r["id"]: r for r in store.runs()}
    studies = {}  # newest run id -> the study it belongs to (a study sits where its newest run is)
    for study in store.studies():
        members = [runs[i] for i in (study["neurons_run"], study["modules_run"]) if i in runs]
        if members:
            studies[members[0]["id"]] = (study, members)
    seen = {r["id"] for _, members in studies.values() for r in members}
    for run_id, r in runs.items():
        if run_id in studies:
            study, members = studies[run_id]
            rows.append((f"study:{study['id']}", study_cells(study, members, working)))
            for i, member in enumerate(members):
                cells = _run_row(member, working)
                cells[0] = f"{'└' if i == len(members) - 1 else '├'} {cells[0]}"
                rows.append((str(member["id"]), cells))
        elif run_id not in seen:
            rows.append((str(run_id), _run_row(r, working)))
    return rows


def _run_row(r: dict, working: dict) -> list[str]:
    cells = run_cells(r)
    if job := working.get(r["id"]):
        cells[1] = job["text"] if r["status"] == "running" else f"{r['status']}; {job['text']}"
    return cells


def study_cells(study: dict, members: list[dict], working: dict) -> list[str]:
    """A study as one row: its status (or its job's stage), its module run's pairs and TE, both runs' rows,
    the wall time of its stages."""
    first = members[-1]  # its module run
    job = next((working[r["id"]] for r in members if r["id"] in working), None)
    status = f"{study['status']}; {job['text']}" if job else study["status"]
    te = f"{first['mean_te']:+.3f}" if first["mean_te"] is not None else ""
    started = datetime.fromisoformat(study["created"]).astimezone().strftime("%m-%d %H:%M")
    return [
        f"study {study['id']}",
        status,
        model_label(study["model"]),
        started,
        te,
        str(first["n_pairs"]),
        str(sum(r["n_rows"] for r in members)),
        "claims 0-4",
        "+".join(dict.fromkeys(r["method"] or RunSpec.from_json(r["spec"]).method for r in members)),
        RunSpec.from_json(first["spec"]).metric,
        _clock(sum(study["stage_s"].values())),
    ]


def recent_models(store: Store, limit: int = 10) -> list[str]:
    sql = "SELECT model FROM runs GROUP BY model ORDER BY MAX(id) DESC LIMIT ?"
    return [m for (m,) in store.db.execute(sql, [limit])]


# each pair's control token count, computed once per query (not a JSON parse per effect row); stored
# positions are control token indices
LENGTHS = """WITH lengths AS MATERIALIZED (
    SELECT pair, json_array_length(control_tokens) AS n FROM pairs WHERE run_id = ?)"""


# a row's position: NULL for the module-level site (`*`, or `suffix` for end-aligned pairs; a run has one of
# the two); counted from the end (-1 the last token) when its parameter is true
POSITION = "CASE WHEN e.position < 0 THEN NULL WHEN ? THEN e.position - p.n ELSE e.position END"


def module_level_name(store: Store, run_id: int) -> str:
    """What the run's module-level site is called: `*` (every position) or `suffix` (end alignment)."""
    positions = RunSpec.from_json(store.run(run_id)["spec"]).positions
    return "suffix" if "suffix" in (p.strip() for p in positions.split(",")) else "*"


def _pair_filter(pair: int | None, category: str | None = None) -> tuple[str, list]:
    """One pair's rows; else the pairs of one category (of the harmful prompt); else every pair's."""
    if pair is not None:
        return "AND e.pair = ?", [pair]
    if category is not None:
        return "AND e.pair IN (SELECT pair FROM pairs WHERE run_id = e.run_id AND category = ?)", [category]
    return "", []


def _value(effect: Effect, share: bool) -> str:
    """What a layer or grid cell aggregates over the pairs shown: the mean IE (or DE), or (`share`) the share
    of the effect, sum IE / sum TE over the pairs that have the site (analysis.stats.ie_share, in SQL)."""
    x = Effect(effect).value  # (an enum member: never text from a screen)
    return f"SUM(e.{x}) / NULLIF(SUM(pp.te), 0)" if share else f"AVG(e.{x})"


def _joins(value: str) -> str:
    return "JOIN pairs pp ON pp.run_id = e.run_id AND pp.pair = e.pair" if "pp.te" in value else ""


def layer_effects(
    store: Store, view: View, method: str, share: bool = False, last: bool = False
) -> dict[int, dict[str, float]]:
    """The view's effect (or with `share` its share of TE) of each module patched at every position at once
    ('*', or 'suffix'), per layer; with `last`, patched at each pair's last position instead (a run without
    '*')."""
    return _by_layer(store, view, method, _value(view.effect, share), last, "module", LAYER_MODULES)


def head_grid(
    store: Store, view: View, method: str, share: bool = False, last: bool = False
) -> dict[int, dict[int, float]]:
    """The effect (or its share of TE) of each attention head, layer -> head -> value, patched at every
    position at once ('*' or 'suffix'), or with `last` at each pair's last position: the heads in one view."""
    return _by_layer(store, view, method, _value(view.effect, share), last, "neuron", ("head",))


def _by_layer(store, view: View, method, value, last, column: str, modules: tuple[str, ...]):
    """layer -> e.`column` (a module, or a head's number) -> value, over the rows of `modules` at the
    module-level site or (`last`) each pair's last position."""
    where, args = _pair_filter(view.pair, view.category)
    at = "e.position = p.n - 1" if last else "e.position < 0"
    sql = f"""{LENGTHS} SELECT e.layer, e.{column}, {value} FROM effects e JOIN lengths p ON p.pair = e.pair
              {_joins(value)} WHERE e.run_id = ? AND e.method = ? AND e.module IN ({",".join("?" * len(modules))})
              AND {at} {where} GROUP BY e.layer, e.{column}"""
    out: dict[int, dict] = {}
    params = [view.run_id, view.run_id, method, *modules, *args]
    for layer, key, ie in store.db.execute(sql, params).fetchall():
        out.setdefault(layer, {})[key] = ie
    return out


def has_heads(store: Store, run_id: int) -> bool:
    return _has(store, run_id, ("head",))


def module_grid(
    store: Store, view: View, method: str, share: bool = False
) -> dict[str, dict[int | None, float]]:
    """module -> {position: effect (or its share of TE)} for the view's layer; position None is `*`. One
    pair's positions are its token indices; over pairs they count from the end (-1 the last token), so pairs
    of different lengths line up as in `export --aggregate`."""
    where, args = _pair_filter(view.pair, view.category)
    value = _value(view.effect, share)
    sql = f"""{LENGTHS} SELECT e.module, {POSITION} AS pos, {value}
              FROM effects e JOIN lengths p ON p.pair = e.pair {_joins(value)}
              WHERE e.run_id = ? AND e.method = ? AND e.module IN {LAYER_MODULES} AND e.layer = ?
              {where} GROUP BY e.module, pos"""
    out: dict[str, dict[int | None, float]] = {}
    params = [view.run_id, view.pair is None, view.run_id, method, view.layer, *args]
    for module, position, ie in store.db.execute(sql, params):
        out.setdefault(module, {})[position] = ie
    return out


def generation_flips(
    store: Store, view: View, layer: int
) -> dict[tuple[str, int | None, int], tuple[int, int]]:
    """(module, position, neuron) -> (pairs whose judged answer flipped, pairs verified) for one layer's
    sites that --verify-generation patched, over the view's pairs; positions as in `module_grid`, neuron -1
    for modules."""
    where, args = _pair_filter(view.pair, view.category)
    # (aliased `e` as the effects are, so that the shared position and pair filters apply)
    sql = f"""{LENGTHS} SELECT e.module, {POSITION} AS pos, e.neuron, SUM(e.flips), COUNT(*)
              FROM generations e JOIN lengths p ON p.pair = e.pair
              WHERE e.run_id = ? AND e.layer = ? {where} GROUP BY e.module, pos, e.neuron"""
    rows = store.db.execute(sql, [view.run_id, view.pair is None, view.run_id, layer, *args])
    return {(module, pos, neuron): (flips, n) for module, pos, neuron, flips, n in rows}


NEURON_MATCH = "223 (a unit in any layer), 3:223 (layer 3's unit 223) or 3: (layer 3)"


def _neuron_match(match: str | None, table: str) -> tuple[str, list]:
    """The neurons a filter names (NEURON_MATCH), as SQL on `table`'s layer and neuron, across every page."""
    text = (match or "").strip()
    if not text:
        return "", []
    if m := re.fullmatch(r"(\d+):(\d+)", text):
        return f"AND {table}.layer = ? AND {table}.neuron = ?", [int(m[1]), int(m[2])]
    if m := re.fullmatch(r"(\d+):", text):
        return f"AND {table}.layer = ?", [int(m[1])]
    if text.isdigit():
        return f"AND {table}.neuron = ?", [int(text)]
    raise StoreError(f"filter '{text}': name neurons as {NEURON_MATCH}")


def neuron_filter_check(match: str) -> None:
    """Refuse a neuron filter that names no neurons (one line: NEURON_MATCH)."""
    _neuron_match(match, "s")


def top_neurons(store: Store, view: View, method: str, limit: int = PAGE) -> list[tuple]:
    """(layer, neuron, position, IE, exact IE or None, n pairs, IE/TE) by |IE|, of the view's neuron layer or
    of every layer, one page at a time (with the DE, the same of the DE, ranked by |TE - DE|, what the effect
    needs the neuron for). Over pairs, IE is the mean, IE/TE sum IE / sum TE, and positions count from the
    end as in `module_grid`; a finished run's average over all its pairs is read from its neuron summary (one
    without, a run stopped by a full disk or summarised by an older release, is aggregated live). The view's
    filter keeps the neurons it names (_neuron_match), paged as the rest."""
    x, run_id, layer, pair = Effect(view.effect).value, view.run_id, view.neuron_layer, view.pair
    if pair is None and view.category is None and _summarised(store, run_id):
        return _summary_neurons(store, run_id, layer, method, limit, view.offset, x, view.filter)
    where, args = _pair_filter(pair, view.category)
    if layer is not None:
        where, args = f"AND e.layer = ? {where}", [layer, *args]
    named, named_args = _neuron_match(view.filter, "e")
    where, args = f"{where} {named}", [*args, *named_args]
    # (the alias must not be `ie`: inside ABS() SQLite would read the column instead)
    sql = f"""{LENGTHS} SELECT e.layer, e.neuron, {POSITION} AS pos,
                     AVG(CASE WHEN e.method = ? THEN e.{x} END) AS mean_ie,
                     AVG(CASE WHEN e.method = 'exact' THEN e.{x} END), COUNT(CASE WHEN e.method = ? THEN 1 END),
                     SUM(CASE WHEN e.method = ? THEN e.{x} END) / NULLIF(SUM(CASE WHEN e.method = ? THEN pp.te END), 0)
              FROM effects e JOIN lengths p ON p.pair = e.pair {_joins("pp.te")}
              WHERE e.run_id = ? AND e.method IN (?, 'exact') AND e.module = 'neuron'
              {where} GROUP BY e.layer, pos, e.neuron HAVING mean_ie IS NOT NULL
              ORDER BY ABS({"mean_ie" if x == "ie" else "AVG(CASE WHEN e.method = ? THEN pp.te END) - mean_ie"})
              DESC LIMIT ? OFFSET ?"""
    args = [run_id, pair is None, method, method, method, method, run_id, method, *args]
    return store.db.execute(sql, [*args, *([method] if x == "de" else []), limit, view.offset]).fetchall()


def neuron_count(store: Store, view: View, method: str) -> int:
    """How many rows `top_neurons` pages through (its pages: "page N of M")."""
    run_id, layer, pair = view.run_id, view.neuron_layer, view.pair
    if pair is None and view.category is None and _summarised(store, run_id):
        where, args = ("AND s.layer = ?", [layer]) if layer is not None else ("", [])
        named, named_args = _neuron_match(view.filter, "s")
        sql = f"SELECT COUNT(*) FROM neuron_summary s WHERE s.run_id = ? AND s.method = ? {where} {named}"
        return store.db.execute(sql, [run_id, method, *args, *named_args]).fetchone()[0]
    where, args = _pair_filter(pair, view.category)
    if layer is not None:
        where, args = f"AND e.layer = ? {where}", [layer, *args]
    named, named_args = _neuron_match(view.filter, "e")
    where, args = f"{where} {named}", [*args, *named_args]
    sql = f"""{LENGTHS} SELECT COUNT(*) FROM (SELECT 1 FROM effects e JOIN lengths p ON p.pair = e.pair
              WHERE e.run_id = ? AND e.method = ? AND e.module = 'neuron' {where}
              GROUP BY e.layer, {POSITION}, e.neuron)"""
    return store.db.execute(sql, [run_id, run_id, method, *args, pair is None]).fetchone()[0]


def _summarised(store: Store, run_id: int) -> bool:
    """Whether the run's neuron summary can be read: written now for a stopped run that lacks one and whose
    writer is gone (a summary from an older release), where the store can be written; else (a run its writer
    is about to summarise, a full disk, a read-only file) the live aggregate serves."""
    run = store.run(run_id)
    idle = run["status"] != "running" and not store.alive(run)
    if not run["summarised"] and idle and not store.read_only:
        try:
            store.summarise(run_id)
        except StoreError:
            return False
        return True
    return bool(run["summarised"])


# how the neuron panes rank by each effect: IE by its size; DE by the effect the neuron is necessary for,
# TE - DE (a DE near the whole TE is a neuron the effect does without)
RANKED_BY = {"ie": "s.mean_ie", "de": "s.te_sum / s.n - s.mean_de"}


def _summary_neurons(
    store: Store,
    run_id: int,
    layer: int | None,
    method: str,
    limit: int,
    offset: int,
    effect: str,
    match=None,
):
    where, args = ("AND s.layer = ?", [layer]) if layer is not None else ("", [])
    named, named_args = _neuron_match(match, "s")
    where, args = f"{where} {named}", [*args, *named_args]
    mean = f"mean_{effect}"
    sql = f"""SELECT s.layer, s.neuron, s.pos, s.{mean}, COALESCE(x.{mean}, CASE WHEN s.method = 'exact'
                     THEN s.{mean} END), s.n, s.{mean} * s.n / NULLIF(s.te_sum, 0)
              FROM neuron_summary s LEFT JOIN neuron_summary x ON s.method != 'exact' AND x.method = 'exact'
                   AND x.run_id = s.run_id AND x.layer = s.layer AND x.pos IS s.pos AND x.neuron = s.neuron
              WHERE s.run_id = ? AND s.method = ? {where} ORDER BY ABS({RANKED_BY[effect]}) DESC LIMIT ? OFFSET ?"""
    return store.db.execute(sql, [run_id, method, *args, limit, offset]).fetchall()


def has_neurons(store: Store, run_id: int) -> bool:
    return _has(store, run_id, ("neuron",))


def has_modules(store: Store, run_id: int) -> bool:
    return _has(store, run_id, LAYER_MODULES)


def _has(store: Store, run_id: int, modules: tuple[str, ...]) -> bool:
    """Whether the run has rows of any of `modules`."""
    sql = f"SELECT 1 FROM effects WHERE run_id = ? AND module IN ({','.join('?' * len(modules))}) LIMIT 1"
    return store.db.execute(sql, [run_id, *modules]).fetchone() is not None


# how each sign of `gate --sign` ranks neurons by their mean IE over pairs
GATE_ORDER = {
    "positive": "HAVING mean > 0 ORDER BY mean DESC",
    "negative": "HAVING mean < 0 ORDER BY mean ASC",
    "abs": "ORDER BY ABS(mean) DESC",
}


def gate_neurons(
    store: Store, run_id: int, top: int, method: str, sign: str, layers: list[int]
) -> list[tuple[int, int]]:
    """The run's `top` neurons of some layers by mean IE over its pairs and neuron positions (the most
    positive, most negative or largest in size), as (layer, unit) with block sites expanded to their units;
    strongest first."""
    # from the run's neuron summary (averaged over pairs per position), then over positions
    if not store.run(run_id)["summarised"]:
        store.summarise(run_id)
    sql = f"""SELECT layer, neuron, MAX(width), SUM(mean_ie * n) / SUM(n) AS mean FROM neuron_summary
             WHERE run_id = ? AND method = ? AND layer IN ({", ".join("?" * len(layers))})
             GROUP BY layer, neuron {GATE_ORDER[sign]} LIMIT ?"""
    rows = store.db.execute(sql, [run_id, method, *layers, top]).fetchall()
    return [(layer, unit) for layer, first, width, _ in rows for unit in range(first, first + width)][:top]


def gate_verdict(check: dict) -> str:
    """One line for a stored gate check: per layer group, the smallest K whose top set flips the majority
    of the refused held-out answers (or, unjudged, the largest share of TE removed), against random."""
    spec, parts = check["spec"], []
    for group in spec["groups"]:
        points = [p for p in check["curve"] if p.group == group]
        if not points:
            continue
        flips = [p for p in points if p.top_flipped is not None and p.top_flipped > 0.5]
        if flips:
            p = flips[0]
            parts.append(
                f"{group}: top {p.units} flip {p.top_flipped:.0%} of {p.refused} refusals "
                f"(random {stats.percent(p.random_flipped)})"
            )
        else:
            p = max(points, key=lambda p: p.top_removed or 0)
            refused = "" if p.refused else ", no refused answers to flip"
            parts.append(
                f"{group}: no K flips a majority; top {p.units} remove {p.removed_text()} "
                f"(random {stats.percent(p.random_removed)}){refused}"
            )
    for p in (p for p in check["curve"] if p.group == "direction"):
        parts.append(
            f"direction (layer {spec['direction']['layer']}): flips {stats.percent(p.top_flipped)} of "
            f"{p.refused} refusals, removes {p.removed_text()} (random "
            f"{stats.percent(p.random_flipped)}, {stats.percent(p.random_removed)})"
        )
    return (
        f"gate check {check['id']} ({spec['sign']} neurons, held at {spec['ablate']}, "
        f"{check['curve'][0].pairs if check['curve'] else 0} held-out pairs): " + "; ".join(parts)
    )


def gate_answers(store: Store, check: dict, limit: int) -> list[tuple]:
    """(pair_id, group, K, answer before, answer after) for the first pairs, under a check's widest layer
    group's largest top set: what the ablation does to the text."""
    groups = check["spec"]["groups"]  # (the neurons' groups: the direction's answers are not among them)
    texts = [g for g in store.gate_generations(check["id"]) if g[1] in groups]
    if not texts:
        return []
    widest = max(texts, key=lambda g: (groups.index(g[1]), g[2]))
    return [g for g in texts if g[1:3] == widest[1:3]][:limit]
