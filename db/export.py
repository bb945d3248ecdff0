"""Tables out of the store: per-pair or aggregated rows, written atomically in several formats."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from harmmed_tui.analysis.judge import behaviour_label
from harmmed_tui.analysis.sites import LAYER_MODULES, position_label
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.analysis.stats import bootstrap_cis, ie_share
from harmmed_tui.db.store import Store, StoreError

FORMATS = ("csv", "tsv", "json", "jsonl", "markdown", "latex", "parquet")
LEVELS = ("layer", "neuron", "head", "gate", "pairs", "generation")
PAIR_COLUMNS = (
    "run_id pair pair_id category treatment control m_treatment m_control te answer_treatment answer_control "
    "refused_treatment refused_control behaviour"
).split()
LAYER_COLUMNS = "run_id pair layer module position token control_token te ie ie_norm".split()
NEURON_COLUMNS = "run_id pair layer neuron position token control_token te ie ie_norm method".split()
HEAD_COLUMNS = "run_id pair layer head position token control_token te ie ie_norm method".split()
AGGREGATE_KEYS = {
    "layer": ["layer", "module", "position"],
    "neuron": ["layer", "neuron", "position", "method"],
    "head": ["layer", "head", "position", "method"],
}
# the stored modules each level holds (a head is stored with its query head in the neuron column)
LEVEL_MODULES = {"layer": LAYER_MODULES, "neuron": ("neuron",), "head": ("head",)}
LEVEL_COLUMNS = {"layer": LAYER_COLUMNS, "neuron": NEURON_COLUMNS, "head": HEAD_COLUMNS}
GATE_COLUMNS = (
    "run_id check_id sign ablate grp k units pair pair_id arm seed m_before m_after shift te "
    "refused_before refused_after text_before text_after"
).split()


def _norm(effect: float | None, te: float | None) -> float | None:
    """A pair's effect over its TE (IE/TE, DE/TE); None without a TE, or without the effect."""
    return effect / te if te and effect is not None else None


def effect_rows(
    store: Store,
    run_id: int,
    level: str,
    seq_len: bool = False,
    method: str | None = None,
    category: bool = False,
    top_sites: int | None = None,
) -> list[dict]:
    """One row per (pair, site), columns as documented in the README (plus the pair's token count); with
    `top_sites`, only the rows of the sites of largest |mean IE| over pairs (chosen in SQL: the aggregate of a
    few top sites need not read a store's millions of rows).

    Rows of one `method`; by default the run's own for the layer level (whose columns name no method),
    and every method for the neuron level (an atp run's exact verification sits beside its estimates).
    Positions are token indices, or for end-aligned runs offsets from the end (-1 the last token), with the
    treatment's token (`token`) and the control's (`control_token`) at that position."""
    run = store.run(run_id)
    if level not in LEVEL_MODULES:
        raise StoreError(f"unknown level '{level}' (use {', '.join(LEVELS)})")
    if method is None and level == "layer":
        method = store.run_method(run_id)
    from_end = RunSpec.from_json(run["spec"]).align == "end"
    control_tokens = {p["pair"]: p["control_tokens"] for p in store.pairs(run_id)}
    # (method = ?, not LIKE: the index on (run_id, method, module, ...) then seeks the level's rows)
    where = f"e.run_id = ? AND e.module IN ({','.join('?' * len(LEVEL_MODULES[level]))})"
    where += " AND e.method = ?" if method else ""
    args = [run_id, *LEVEL_MODULES[level], *([method] if method else [])]
    chosen = ""
    if top_sites:  # the site as the aggregate groups it: positions from the end
        site = "e.layer, e.module, e.neuron, e.method, CASE WHEN e.position < 0 THEN e.position ELSE e.position - n.n END"
        chosen = f"""AND ({site}) IN (SELECT {site} FROM effects e JOIN lengths n ON n.pair = e.pair
            WHERE {where} GROUP BY 1, 2, 3, 4, 5 ORDER BY abs(AVG(e.ie)) DESC LIMIT ?)"""
        args += [*args, top_sites]
    sql = f"""
        WITH lengths AS (SELECT pair, json_array_length(control_tokens) AS n FROM pairs WHERE run_id = {int(run_id)})
        SELECT e.run_id, e.pair, e.layer, e.module, e.neuron, e.neuron AS head, e.position, e.token, p.te, e.ie,
               e.de, e.method, p.category
        FROM effects e JOIN pairs p ON p.run_id = e.run_id AND p.pair = e.pair JOIN lengths n ON n.pair = e.pair
        WHERE {where} {chosen}
        ORDER BY e.pair, e.layer, e.module, e.neuron, e.position, e.method"""
    columns = (["category"] if category else []) + LEVEL_COLUMNS[level]
    if "de" in RunSpec.from_json(run["spec"]).effects:  # direct effects, where the run asked for them
        columns.insert(columns.index("ie_norm") + 1, "de")
        columns.insert(columns.index("de") + 1, "de_norm")
    columns += ["seq_len"] if seq_len else []
    out = []
    for r in store.db.query(sql, args):
        tokens = control_tokens[r["pair"]]
        r["seq_len"] = len(tokens)
        r["ie_norm"], r["de_norm"] = _norm(r["ie"], r["te"]), _norm(r["de"], r["te"])
        position = r["position"]
        r["control_token"] = tokens[position] if position >= 0 else position_label(position)
        r["position"] = position_label(position) if position < 0 else position - len(tokens) * from_end
        out.append({c: r[c] for c in columns})
    return out


def gate_rows(store: Store, run_id: int) -> list[dict]:
    """One row per (gate check, layer group, K, held-out pair, arm): the run's gate checks, oldest first."""
    store.run(run_id)
    sql = """
        SELECT c.run_id, r.check_id, json_extract(c.spec, '$.sign') AS sign,
               json_extract(c.spec, '$.ablate') AS ablate, r.*
        FROM gate_rows r JOIN gate_checks c ON c.id = r.check_id
        WHERE c.run_id = ? ORDER BY r.check_id, r.grp, r.k, r.pair, r.seed"""
    return [{c: r[c] for c in GATE_COLUMNS} for r in store.db.query(sql, [run_id])]


def gate_curve_rows(store: Store, run_id: int) -> list[dict]:
    """One row per (gate check, layer group, K): the gate curves of the run's checks, oldest first."""
    return [
        {
            "run_id": run_id,
            "check_id": c["id"],
            "sign": c["spec"]["sign"],
            "ablate": c["spec"]["ablate"],
            **p.as_dict(),
        }
        for c in reversed(store.gate_checks(run_id))
        for p in c["curve"]
    ]


GENERATION_COLUMNS = "run_id pair pair_id layer module position neuron method ie answer refused flips".split()


def generation_rows(store: Store, run_id: int) -> list[dict]:
    """One row per (pair, verified site): --verify-generation's patched answers and their verdicts."""
    from_end = RunSpec.from_json(store.run(run_id)["spec"]).align == "end"
    sql = """SELECT g.*, p.pair_id, json_array_length(p.control_tokens) AS n FROM generations g
             JOIN pairs p ON p.run_id = g.run_id AND p.pair = g.pair
             WHERE g.run_id = ? ORDER BY g.pair, ABS(g.ie) DESC"""
    rows = []
    for r in store.db.query(sql, [run_id]):
        position = r["position"]  # counted from the end for end-aligned pairs, as in the effect rows
        r["position"] = position_label(position) if position < 0 else position - r["n"] * from_end
        r["neuron"] = None if r["neuron"] < 0 else r["neuron"]
        rows.append({c: r[c] for c in GENERATION_COLUMNS})
    return rows


def stored_behaviour(pair: dict) -> str:
    """A stored pair's behaviour (analysis.judge.behaviour_label), or '' where its answers were not judged."""
    t, c = pair.get("refused_treatment"), pair.get("refused_control")
    return "" if t is None or c is None else behaviour_label(t, c)


def pair_rows(store: Store, run_id: int) -> list[dict]:
    """One row per pair: its prompts, metric totals, greedy answers and judged behaviour."""
    rows = []
    for p in store.pairs(run_id):
        p = {**p, "run_id": run_id, "behaviour": stored_behaviour(p)}
        rows.append({c: p.get(c) for c in PAIR_COLUMNS})
    return rows


RECUR_TOP = 20  # a neuron "recurs" in a pair when it is among that pair's 20 strongest neuron sites


def recurrence(store: Store, run_id: int, method: str | None = None) -> dict[tuple[int, int], int]:
    """(layer, neuron) -> in how many pairs it is among the pair's RECUR_TOP strongest neuron sites by |IE|
    (one method's rows; by default the run's own)."""
    method = method or store.run_method(run_id)
    pairs = [p["pair"] for p in store.db.query("SELECT pair FROM pairs WHERE run_id = ?", [run_id])]
    sql = """SELECT DISTINCT layer, neuron FROM (SELECT layer, neuron FROM effects
             WHERE run_id = ? AND method = ? AND module = 'neuron' AND pair = ? ORDER BY abs(ie) DESC LIMIT ?)"""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for pair in pairs:  # one index range per pair (effects_by_strength), not a sort of the whole run
        for layer, neuron in store.db.execute(sql, [run_id, method, pair, RECUR_TOP]):
            counts[(layer, neuron)] += 1
    return dict(counts)


BY = ("site", "category")


def aggregate(rows: list[dict], level: str, by: str = "site", top: int | None = None) -> list[dict]:
    """One row per site (per category of the harmful prompt too, with by='category') over pairs: mean IE
    with a 95% bootstrap CI, its share of the effect (ie_share = sum IE / sum TE, analysis.stats.ie_share),
    the mean of the per-pair ratios under its own name, and n. With `top`, only the `top` sites of largest
    |mean IE| (their bootstrap is what costs: a store of 10^6 rows has thousands of sites).

    Pairs may differ in length, so positions are aligned from the end: -1 is the last token (where the
    refusal decision is read), and the chat template's closing tokens line up across pairs."""
    keys = (["category"] if by == "category" else []) + AGGREGATE_KEYS[level]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if isinstance(r["position"], int) and r["position"] >= 0:
            r = {**r, "position": r["position"] - r["seq_len"]}
        groups[tuple(r[k] for k in keys)].append(r)
    if top:
        mean = {key: abs(sum(r["ie"] for r in group) / len(group)) for key, group in groups.items()}
        groups = {key: groups[key] for key in sorted(groups, key=lambda k: -mean[k])[:top]}
    de = bool(groups) and "de" in next(iter(groups.values()))[0]
    cis = {
        effect: dict(
            zip(groups, bootstrap_cis([[r[effect] for r in g] for g in groups.values()]), strict=True)
        )
        for effect in ("ie", "de")[: 1 + de]
    }  # (every site's interval at once: export.aggregate is most of a large export's time)
    out = []
    for key, group in groups.items():
        norms = [r["ie_norm"] for r in group if r["ie_norm"] is not None]
        mean, lo, hi, share = _over_pairs(group, "ie", cis["ie"][key])
        out.append(
            {
                "run_id": group[0]["run_id"],
                **dict(zip(keys, key, strict=True)),
                "token": group[0]["token"] if len({r["token"] for r in group}) == 1 else "",
                "control_token": group[0]["control_token"]
                if len({r["control_token"] for r in group}) == 1
                else "",
                "ie_mean": mean,
                "ci_low": lo,
                "ci_high": hi,
                "ie_share": share,
                "ie_norm_mean_of_pairs": sum(norms) / len(norms) if norms else None,
                **(_direct(group, cis["de"][key]) if de else {}),
                "n": len(group),
            }
        )
    return out


def _over_pairs(
    group: list[dict], effect: str, ci: tuple[float, float]
) -> tuple[float, float, float, float | None]:
    """One site's effect (ie or de) over its pairs: the mean, its 95% bootstrap CI (`ci`, stats.bootstrap_cis),
    and its share of the effect, sum of the effect / sum TE over the pairs that have a TE (None without any)."""
    values = [r[effect] for r in group]
    judged = [r for r in group if r["te"] is not None]
    share = ie_share([r[effect] for r in judged], [r["te"] for r in judged]) if judged else None
    return sum(values) / len(values), *ci, share


def _direct(group: list[dict], ci: tuple[float, float]) -> dict:
    """A site's direct effect over pairs, aggregated as its IE is."""
    mean, lo, hi, share = _over_pairs(group, "de", ci)
    return {"de_mean": mean, "de_ci_low": lo, "de_ci_high": hi, "de_share": share}


def table(
    store: Store,
    run_id: int,
    level: str = "layer",
    aggregated: bool = False,
    top: int | None = None,
    method: str | None = None,
    by: str = "site",
):
    if by not in BY:
        raise StoreError(f"unknown grouping '{by}' (use {' or '.join(BY)})")
    if by != "site" and not aggregated:
        raise StoreError(
            "--by groups aggregated rows: use it with --aggregate (per-pair rows name their pair)"
        )
    if level == "pairs":
        if aggregated:
            raise StoreError("pair rows are one per pair already: export them without --aggregate")
        rows = pair_rows(store, run_id)
        return sorted(rows, key=lambda r: -abs(r["te"] or 0))[:top] if top else rows
    if level == "generation":
        if aggregated:
            raise StoreError("generation rows are one per verified site: export them without --aggregate")
        rows = generation_rows(store, run_id)
        return sorted(rows, key=lambda r: -abs(r["ie"]))[:top] if top else rows
    if level == "gate":
        if aggregated:  # the curve: one row per layer group and K
            return gate_curve_rows(store, run_id)
        rows = gate_rows(store, run_id)
        return sorted(rows, key=lambda r: -abs(r["shift"]))[:top] if top else rows
    if level != "layer" and top and method is None and len(run_methods(store, run_id, level)) > 1:
        method = store.run_method(run_id)  # a top N ranks one method's rows (an atp run's: its estimates)
    chosen = top if aggregated and by == "site" else None
    rows = effect_rows(
        store, run_id, level, seq_len=aggregated, method=method, category=by == "category", top_sites=chosen
    )
    if aggregated:
        rows = aggregate(rows, level, by, top)
        if level == "neuron":  # which neurons recur across pairs, for each method's rows
            recur = {m: recurrence(store, run_id, m) for m in {r["method"] for r in rows}}
            for r in rows:
                r["recur"] = recur[r["method"]].get((r["layer"], r["neuron"]), 0)
    if top:
        value = "ie_mean" if aggregated else "ie"
        rows = sorted(rows, key=lambda r: -abs(r[value]))[:top]
    return rows


def run_methods(store: Store, run_id: int, level: str) -> list[str]:
    """The methods a run's rows of a level were computed by (an atp run's verified rows say exact)."""
    modules = LEVEL_MODULES[level]
    sql = (
        f"SELECT DISTINCT method FROM effects WHERE run_id = ? AND module IN ({','.join('?' * len(modules))})"
    )
    return sorted(m for (m,) in store.db.execute(sql, [run_id, *modules]))


def format_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


# one pass over the text: replacing one character after another would escape the braces of `\textbackslash{}`
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "[": "{[}",  # (a cell opening with [ would be read as the optional argument of the row's \\)
    "]": "{]}",
    "\n": " ",  # a blank line would end the tabular's paragraph
    "\r": " ",
}
_LATEX_RE = re.compile("|".join(map(re.escape, _LATEX)))


def latex_escape(s: str) -> str:
    return _LATEX_RE.sub(lambda m: _LATEX[m.group()], s)


# Markdown: a backslash escapes any ASCII punctuation (CommonMark); these would otherwise start emphasis,
# code, links, html or entities, or end the cell (|). Newlines become <br>, which keeps the row on one line.
_MARKDOWN_RE = re.compile(r"([\\`*_\[\]<>&~|])")


def markdown_cell(s: str) -> str:
    return _MARKDOWN_RE.sub(r"\\\1", s).replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


# A spreadsheet runs a cell that opens with one of these as a formula (=HYPERLINK(...)); prompt sets and model
# answers are untrusted, so text cells get a leading ' (OWASP's CSV injection advice), unless asked not to.
FORMULA_OPENERS = ("=", "+", "-", "@", "\t", "\r")


def guarded(value):
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_OPENERS) else value


def render(rows: list[dict], fmt: str, formula_guard: bool = True) -> str | bytes:
    """The rows in a format. csv/tsv text cells that a spreadsheet would run as formulas are prefixed with
    ' unless `formula_guard` is off (for pipelines that read the cells as data)."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown format '{fmt}' (use {', '.join(FORMATS)})")
    columns = list(rows[0]) if rows else []
    if fmt in ("csv", "tsv"):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: guarded(v) for c, v in r.items()} if formula_guard else r for r in rows)
        return buf.getvalue()
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(map(markdown_cell, columns)) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        lines += ["| " + " | ".join(markdown_cell(format_value(r[c])) for c in columns) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        numeric = [all(isinstance(r[c], int | float) or r[c] is None for r in rows) for c in columns]
        spec = "".join("r" if n else "l" for n in numeric)
        lines = [
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(latex_escape(c) for c in columns) + r" \\",
        ]
        lines.append(r"\midrule")
        lines += [" & ".join(latex_escape(format_value(r[c])) for c in columns) + r" \\" for r in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StoreError("parquet export needs pyarrow: pip install 'harmmed-tui[parquet]'") from None
    buf = io.BytesIO()
    pq.write_table(_arrow_table(pa, rows, columns), buf)
    return buf.getvalue()


def _arrow_table(pa, rows: list[dict], columns: list[str]):
    """Parquet needs one type per column: a column that mixes numbers and text (`position`: token indices
    and `*`) is written as text, as csv writes it; the others keep their types."""
    data = {}
    for c in columns:
        values = [r[c] for r in rows]
        if len({type(v) for v in values if v is not None}) > 1 and any(isinstance(v, str) for v in values):
            values = [None if v is None else str(v) for v in values]
        data[c] = values
    return pa.table(data)


def _new_file_mode() -> int:
    """What open() would give a new file: 0666 less the umask (read without changing it for long)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write(data: str | bytes, path: str) -> None:
    """To stdout for '-', else atomically: a temp file beside the target, then a rename. The file gets the
    mode a shell's `>` would give it (the existing file's, or the umask's), and a symlink is written through
    (its target replaced, the link kept). A character device or FIFO (`-o /dev/null`, a pipe) is written in
    place, as a shell's `>` would: renaming over it would replace the system's device with a file. Anything
    that cannot be written is one line."""
    if path == "-":
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data)
        return
    data = data.encode() if isinstance(data, str) else data
    target = Path(path).expanduser()
    try:
        target = target.resolve() if target.is_symlink() else target
        kind = target.stat().st_mode if target.exists() else None
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13), no permission
        raise StoreError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}") from None
    if kind is not None and stat.S_ISDIR(kind):
        raise StoreError(f"{target} is a directory")
    if kind is not None and (stat.S_ISCHR(kind) or stat.S_ISFIFO(kind)):
        try:
            with open(target, "wb") as f:
                f.write(data)
        except OSError as e:
            raise StoreError(f"cannot write {target}: {e.strerror or e}") from None
        return
    if kind is not None and not stat.S_ISREG(kind):
        raise StoreError(f"cannot write {target}: it is not a regular file (a socket or block device)")
    if not target.parent.is_dir():
        raise StoreError(f"cannot write {target}: directory {target.parent} does not exist")
    mode = stat.S_IMODE(kind) if kind is not None else _new_file_mode()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:  # a read-only filesystem, /proc, a full disk
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise StoreError(f"cannot write {target}: {e.strerror or e}") from None
