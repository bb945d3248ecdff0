"""The claims report of the open run (`harmmed-tui report`): four verdicts, the finding and rule of the one
under the cursor, the gate curve, and enter to open the table behind a claim."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual_plotext import PlotextPlot

from harmmed_tui.analysis.claims import INCONCLUSIVE, SUPPORTED
from harmmed_tui.db import report
from harmmed_tui.tui.safe_text import literal
from harmmed_tui.tui.widgets import Table

VERDICT_STYLE = {SUPPORTED: "bold green", INCONCLUSIVE: "bold yellow"}  # not supported: bold red
# where each claim's numbers are in the explorer: (level, layer); layer -1 is the final layer. Claim 3's are
# in the run its gate curve ablated (a study's neuron run), the rest in the run of its effects (claim 4: the
# refusal direction's column beside the modules in the layer table)
BEHIND = {
    0: ("modules", 0),
    1: ("layers", None),
    2: ("layers", None),
    3: ("neurons", -1),
    4: ("layers", None),
}


class ReportScreen(Screen):
    BINDINGS = [
        Binding(
            "enter",
            "open_table",
            "table behind it",
            id="report.open",
            tooltip="open the table behind the claim",
        ),
        Binding("escape", "app.pop_screen", "back", id="report.back", tooltip="back to Explore"),
    ]

    def __init__(self, run_id: int, n_layers: int, claim: int = 0):
        super().__init__()
        self.run_id, self.n_layers, self.claim = run_id, n_layers, claim  # the claim under the cursor

    def compose(self) -> ComposeResult:
        yield Header()
        study = report.study_of(self.app.store, self.run_id)
        whose = f"run {self.run_id}" if study is None else f"study {study['id']}"
        yield Static(f"{whose}: the paper's four claims (arXiv:2604.11663) and a rival", id="crumb")
        yield Table(id="claims", cursor_type="row")
        with Horizontal():
            yield Static("", id="finding")
            yield PlotextPlot(id="curve")
        yield Footer()

    def on_mount(self) -> None:
        self.claims = report.run_claims(self.app.store, self.run_id)
        _, self.effects_run, self.gate_run, _ = report.claims_source(self.app.store, self.run_id)
        t = self.query_one(Table)
        for col in ("#", "verdict", "claim"):
            t.add_column(col)
        for c in self.claims:
            t.add_row(str(c.number), Text(c.verdict, style=VERDICT_STYLE.get(c.verdict, "bold red")), c.title)
        self._plot_curve()
        t.move_cursor(row=self.claim)
        t.focus()

    def _plot_curve(self) -> None:
        """Share of TE removed against K (log x): the top set and the random sets, per layer group."""
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        check = report.gate_check(self.app.store, self.run_id)
        if check is None:
            plt.title("no gate check: a")
            return
        checks = [check]
        ks = sorted({p.k for p in checks[0]["curve"]})
        x = {k: math.log10(k) for k in ks}  # a log axis drawn by hand: plotext's own fails on some data
        curve = checks[0]["curve"]
        for group in checks[0]["spec"]["groups"]:
            points = [p for p in curve if p.group == group and p.top_removed is not None]
            if points:
                plt.plot([x[p.k] for p in points], [p.top_removed for p in points], label=group)
        # (a share of a held-out TE that may be 0 is None: not drawn, never drawn as 0)
        widest = [
            p for p in curve if p.group == checks[0]["spec"]["groups"][-1] and p.random_removed is not None
        ]
        if widest:
            plt.plot(
                [x[p.k] for p in widest], [p.random_removed for p in widest], label="random", marker="dot"
            )
        for p in (p for p in curve if p.group == "direction"):  # one direction: a level across K
            ends = [x[ks[0]], x[ks[-1]]]
            if p.top_removed is not None:
                plt.plot(ends, [p.top_removed] * 2, label="direction")
            if p.random_removed is not None:
                plt.plot(ends, [p.random_removed] * 2, label="random dir.", marker="dot")
        plt.xticks(list(x.values()), [str(k) for k in ks])
        plt.title("TE removed by top K")
        plt.xlabel("K neurons")
        plot.refresh()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        c = self.claims[event.cursor_row]
        self.query_one("#curve").display = (
            c.number >= 3
        )  # the gate curve is claims 3 and 4's; the others' text
        lines = [c.finding, f"rule: {c.rule}."] + ([f"direct effects: {c.direct}."] if c.direct else [])
        lines.append(f"{len(c.pairs)} pairs behind it; enter opens its table")
        self.query_one("#finding", Static).update(literal("\n".join(lines), newlines=True))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_table()

    def action_open_table(self) -> None:
        """The table behind the claim under the cursor, in the run that holds it: back in the explorer below
        where it shows that run, else a new one above (escape comes back to the claims)."""
        from harmmed_tui.tui.explore_screen import ExploreScreen  # (it opens this screen too)

        number = self.claims[self.query_one(Table).cursor_row].number
        level, layer = BEHIND[number]
        layer = self.n_layers - 1 if layer == -1 else layer
        run_id = self.gate_run if number == 3 else self.effects_run
        below = self.app.screen_stack[-2]
        if isinstance(below, ExploreScreen) and below.run_id == run_id:
            self.dismiss((level, layer))
        else:
            self.app.push_screen(ExploreScreen(run_id, level, layer))
