"""The claims report of a stored run: its effects gathered for analysis.claims, written as markdown, LaTeX
or one self-contained HTML page with its figures."""

from __future__ import annotations

import html
import math

from harmmed_tui.analysis import claims
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.db.visible import plain

# the report's lines in each format (its tables: export.render); every text is escaped for its format, after
# its hidden characters are made visible (a bidi override in a pair id reorders no reader's line)
FORMS = {
    "markdown": {
        "escape": lambda s: export.markdown_cell(plain(s, newlines=False)),
        "title": "# Claims report (arXiv:2604.11663), {about}",
        "claim": "## Claim {n}: {title}: **{verdict}**",
        "rule": "*Rule:* {rule}.",
        "direct": "*Direct effects:* {direct}.",
        "behind": "*Behind it:* {pairs}.",
        "note": "*{label}:* {text}.",
    },
    "latex": {
        "escape": lambda s: export.latex_escape(plain(s, newlines=False)),
        "title": r"\section*{{Claims report (arXiv:2604.11663), {about}}}",
        "claim": r"\subsection*{{Claim {n}: {title}: \textbf{{{verdict}}}}}",
        "rule": r"\emph{{Rule:}} {rule}.",
        "direct": r"\emph{{Direct effects:}} {direct}.",
        "behind": r"\emph{{Behind it:}} {pairs}.",
        "note": r"\emph{{{label}:}} {text}.",
    },
}
FORMATS = (*FORMS, "html")


def differing_positions(treatment: list[str], control: list[str]) -> tuple[int, ...]:
    """Control positions whose token differs from the treatment's at the same place, counted from the end
    (the alignment every pair shares: equal lengths align at both ends). A longer control's first tokens
    have no counterpart to patch from, so they are not among them."""
    shift = len(treatment) - len(control)
    return tuple(
        i for i, tok in enumerate(control) if 0 <= i + shift < len(treatment) and treatment[i + shift] != tok
    )


def run_effects(store: Store, run_id: int, effect: str = "ie") -> claims.RunEffects:
    """A run's resid rows at single positions and its module rows at every position at once, per pair: their
    IE, or with effect="necessity" their TE - DE (the effect lost when the site is held at its control value
    in the treatment run; a run without direct effects has none)."""
    run = store.run(run_id)
    provenance, method = run["provenance"], store.run_method(run_id)
    if "n_layers" not in provenance:
        raise StoreError(f"run {run_id} never loaded its model: it has nothing to report")
    value = {"ie": "e.ie", "necessity": "p.te - e.de"}[effect]
    sql = f"""SELECT e.pair, e.module, e.layer, e.position, {value} FROM effects e
              JOIN pairs p ON p.run_id = e.run_id AND p.pair = e.pair
              WHERE e.run_id = ? AND e.method = ? AND e.module IN ('resid', 'attn', 'mlp') AND {value} IS NOT NULL
              AND (e.module = 'resid') = (e.position >= 0)"""  # (module IN: the index seeks, never scans)
    resid: dict[int, dict] = {}
    modules: dict[int, dict] = {}
    for pair, module, layer, position, ie in store.db.execute(sql, [run_id, method]):
        if position >= 0:
            resid.setdefault(pair, {})[(layer, position)] = ie
        else:
            modules.setdefault(pair, {})[(module, layer)] = ie
    pairs = [
        claims.PairEffects(
            p["pair_id"] or str(p["pair"]),
            p["te"],
            len(p["control_tokens"]) - 1,
            differing_positions(p["treatment_tokens"], p["control_tokens"]),
            resid.get(p["pair"], {}),
            modules.get(p["pair"], {}),
            None
            if p["refused_treatment"] is None
            else bool(p["refused_treatment"] and not p["refused_control"]),
        )
        for p in store.pairs(run_id)
        if p["te"] is not None
    ]
    return claims.RunEffects(provenance["n_layers"], provenance["d_mlp"], pairs)


def study_of(store: Store, run_id: int) -> dict | None:
    """The study a run belongs to, if any."""
    sql = "SELECT id FROM studies WHERE modules_run = ? OR neurons_run = ? ORDER BY id DESC"
    row = store.db.execute(sql, [run_id, run_id]).fetchone()
    return store.study(row[0]) if row else None


def claims_source(
    store: Store, run_id: int, check_id: int | None = None
) -> tuple[dict | None, int, int, int | None]:
    """(the study reported, the run whose effects claims 0-2 read, the run whose gate checks claim 3 reads,
    the check or None for the newest): a run of a study reports as its study (unless a check is named);
    any other run, on its own and its own checks."""
    if check_id is None and (study := study_of(store, run_id)) and study["modules_run"] is not None:
        return study, study["modules_run"], study["neurons_run"] or study["modules_run"], study["gate_check"]
    return None, run_id, run_id, check_id


def gate_check(store: Store, run_id: int, check_id: int | None = None) -> dict | None:
    """The gate check claim 3 of a run's report reads (claims_source), or None."""
    _, _, gate_run, check_id = claims_source(store, run_id, check_id)
    checks = [c for c in store.gate_checks(gate_run) if check_id in (None, c["id"])]
    return checks[0] if checks else None


def run_claims(
    store: Store, run_id: int, check_id: int | None = None, gate_run: int | None = None
) -> list[claims.Claim]:
    """The four claims of a run, claim 3 from the given gate check or the newest, of `gate_run` (a study's
    neuron run); by default as claims_source finds them."""
    if gate_run is None:
        _, run_id, gate_run, check_id = claims_source(store, run_id, check_id)
    checks = store.gate_checks(gate_run)
    if check_id is not None:
        checks = [c for c in checks if c["id"] == check_id]
        if not checks:
            raise StoreError(f"run {gate_run} has no gate check {check_id}")
    check = checks[0] if checks else None
    heldout = None
    if check:
        sql = "SELECT DISTINCT pair_id FROM gate_rows WHERE check_id = ? ORDER BY pair"
        heldout = [pid for (pid,) in store.db.execute(sql, [check["id"]])]
    has_de = "de" in RunSpec.from_json(store.run(run_id)["spec"]).effects
    necessity = run_effects(store, run_id, "necessity") if has_de else None
    curve, direction = (check["curve"], check["spec"].get("direction")) if check else (None, None)
    return claims.judge(run_effects(store, run_id), curve, heldout, necessity, direction)


def _rounded(rows: list[dict]) -> list[dict]:
    """Report tables to 3 decimals: they are read, not computed with (the export keeps full precision)."""
    return [
        {k: round(v, 3) + 0.0 if isinstance(v, float) and math.isfinite(v) else v for k, v in r.items()}
        for r in rows
    ]


def _pairs_line(ids: list[str]) -> str:
    shown = ", ".join(ids[:12]) + (f", ... ({len(ids)} in all)" if len(ids) > 12 else "")
    return f"{len(ids)} pairs: {shown}" if ids else "no pairs"


def render_study(store: Store, study_id: int, fmt: str = "markdown") -> str:
    """A study's report: claims 0-2 from its module run, claim 3 from its neuron run's gate curve."""
    study = store.study(study_id)
    if study["modules_run"] is None:
        raise StoreError(
            f"study {study_id} has no module run yet: resume it (harmmed-tui resume study:{study_id})"
        )
    return render(store, study["modules_run"], fmt=fmt)


def render(store: Store, run_id: int, check_id: int | None = None, fmt: str = "markdown") -> str:
    """A run's claims report (a study's, for a run of a study: claims_source)."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown report format '{fmt}' (use {' or '.join(FORMATS)})")
    study, run_id, gate_run, check_id = claims_source(store, run_id, check_id)
    run = store.run(run_id)
    spec = RunSpec.from_json(run["spec"])
    found = run_claims(store, run_id, check_id, gate_run)
    te = [p["te"] for p in store.pairs(run_id) if p["te"] is not None]
    mean_te = f"{sum(te) / len(te):.3f}" if te else "n/a"
    of_study = (
        f"study {study['id']} ({study['status']}, neurons: run {study['neurons_run']}, gate check "
        f"{study['gate_check']}), "
        if study
        else ""
    )
    about = (
        of_study + f"run {run_id}: {run['model']}, metric {spec.metric}, method {store.run_method(run_id)}, "
        f"{len(te)} pairs, mean TE {mean_te}, status {run['status']}"
    )
    notes = _study_notes(spec, run) if study else []
    if fmt == "html":
        return _html(store, run_id, gate_run, about, found, run, notes)
    form = FORMS[fmt]
    esc = form["escape"]
    out = [form["title"].format(about=esc(about)), ""]
    out += [line for label, text in notes for line in (form["note"].format(label=label, text=esc(text)), "")]
    for c in found:
        head = dict(n=c.number, title=esc(c.title), verdict=esc(c.verdict))
        out += [form["claim"].format(**head), esc(c.finding), "", form["rule"].format(rule=esc(c.rule)), ""]
        out += [form["direct"].format(direct=esc(c.direct)), ""] if c.direct else []
        if c.table:
            out += [export.render(_rounded(c.table), fmt), ""]
        out += [form["behind"].format(pairs=esc(_pairs_line(c.pairs))), ""]
    return "\n".join(out)


# The HTML report: one file that opens in any browser with no network and no script: the figures are inline
# SVG, the style inline CSS, every text escaped (prompts, ids and answers are the user's).
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.15rem; margin-top: 2rem; }}
.verdict {{ padding: 0 .4rem; border-radius: .2rem; }}
.supported {{ background: #cfe8d5; }} .not-supported {{ background: #f6d3c9; }} .inconclusive {{ background: #f3e7b5; }}
table {{ border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .15rem .4rem; text-align: right; }}
figure {{ margin: 1rem 0; }} figure svg {{ max-width: 100%; height: auto; }}
figcaption, .rule, .behind {{ color: #555; font-size: .9rem; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 0 1rem; font-size: .85rem; }}
dt {{ font-weight: 600; }} dd {{ margin: 0; overflow-wrap: anywhere; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{about}</p>
{claims}
<h2>Figures</h2>
{figures}
<h2>Provenance</h2>
<dl>{provenance}</dl>
<p class="behind">Written by harmmed-tui; every number above is in the run's exports.</p>
</body></html>
"""


def _study_notes(spec: RunSpec, run: dict) -> list[tuple[str, str]]:
    """What a study measured on: its prompt sources, the refusal tokens its metric read, and every pair it
    dropped with the reason (its module run's provenance)."""
    sources = ", ".join(
        f"{name} {value}" for name, value in (("harmful", spec.harmful), ("harmless", spec.harmless), ("pairs", None))
        if value
    ) or f"pairs {spec.pairs}"  # fmt: skip
    ids = run["provenance"].get("refusal_token_ids")
    tokens = spec.refusal_tokens or "the default refusal openings"
    if spec.refusal_tokens == "auto" and ids:
        tokens = f"learned from the model's own refusals: token ids {', '.join(map(str, ids))}"
    dropped = run["provenance"].get("skipped_pairs") or []
    return [
        ("Prompts", sources),
        ("Refusal tokens", tokens),
        ("Pairs dropped", f"{len(dropped)}: " + "; ".join(dropped) if dropped else "none"),
    ]


def _html(
    store: Store, run_id: int, gate_run: int, about: str, found: list, run: dict, notes: list[tuple[str, str]]
) -> str:
    from harmmed_tui.db import figures  # (matplotlib: for the figures only)

    esc = _html_escape
    parts = [f'<p class="rule"><em>{esc(label)}:</em> {esc(text)}.</p>' for label, text in notes]
    for c in found:
        kind = c.verdict.replace(" ", "-")
        parts.append(
            f'<h2 id="claim-{c.number}">Claim {c.number}: {esc(c.title)}: '
            f'<span class="verdict {esc(kind)}">{esc(c.verdict)}</span></h2>\n<p>{esc(c.finding)}</p>\n'
            f'<p class="rule"><em>Rule:</em> {esc(c.rule)}.</p>'
        )
        if c.direct:
            parts.append(f'<p class="rule"><em>Direct effects:</em> {esc(c.direct)}.</p>')
        if c.table:
            parts.append(_html_table(_rounded(c.table)))
        parts.append(f'<p class="behind"><em>Behind it:</em> {esc(_pairs_line(c.pairs))}.</p>')
    drawn = []
    with figures.drawn_together():  # (the layers figure and the grid read one aggregate)
        for kind, of in (("layers", run_id), ("grid", run_id), ("neurons", gate_run), ("gate", gate_run)):
            try:
                svg, caption = figures.cached_svg(store, of, kind, prefix=f"{kind}-")
            except StoreError as e:
                if "matplotlib" in str(e):
                    raise
                continue  # a run without that level of rows: its figure is left out
            drawn.append(f'<figure id="figure-{kind}">{svg}<figcaption>{esc(caption)}</figcaption></figure>')
    provenance = {"run": run_id, "model": run["model"], "status": run["status"], "spec": run["spec"]}
    provenance |= {k: v for k, v in run["provenance"].items() if k != "chat_template"}
    return PAGE.format(
        title=esc(f"Claims report (arXiv:2604.11663), run {run_id}"),
        about=esc(about),
        claims="\n".join(parts),
        figures="\n".join(drawn) or "<p>No figure: the run has no rows to draw.</p>",
        provenance="".join(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>" for k, v in provenance.items()),
    )


def _html_escape(s: str) -> str:
    return html.escape(plain(s))


def _html_table(rows: list[dict]) -> str:
    esc = _html_escape
    head = "".join(f"<th>{esc(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(export.format_value(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
