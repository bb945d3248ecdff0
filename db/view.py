"""What one explorer pane shows of a run, as one frozen value: the read queries (db.queries) take it, the
explorer holds it, and a change of any part of it is one new View (no attribute set here and there)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from harmmed_tui.analysis.spec import Effect

PAGE = 200  # neurons per page of the neuron panes


@dataclass(frozen=True)
class View:
    run_id: int
    level: str = "layers"  # the pane: layers, modules (one layer's grid), neurons, top, heads
    layer: int | None = None  # the layer in focus (the grid's and the neurons' layer)
    pair: int | None = None  # one pair alone; None: the aggregate over pairs
    category: str | None = None  # with no pair: the aggregate over this category's pairs only
    effect: Effect = Effect.IE
    by_te: bool = True  # show and colour the effect over TE; else the effect, each row by its largest
    page: int = 0  # of the paged panes (neurons, top)
    filter: str = ""  # the rows kept: neurons named in SQL on the paged panes, text in a cell elsewhere
    sort: int | None = None  # the value column sorted by, largest |value| first

    def to(self, **changes) -> View:
        return replace(self, **changes)

    @property
    def neuron_layer(self) -> int | None:
        """The neurons' layer: the one in focus on the neurons pane, every layer (None) on the top pane."""
        return self.layer if self.level == "neurons" else None

    @property
    def offset(self) -> int:
        return self.page * PAGE
