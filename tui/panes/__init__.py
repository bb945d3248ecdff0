"""The drill levels of Explore, a module each: every one draws its table and plot for the screen's run,
pair or category, scale and place (`draw(screen, table, plt, te, checks)`), and ExploreScreen keeps the
navigation, filters and keys."""

from harmmed_tui.analysis.sites import LAYER_MODULES
from harmmed_tui.db import queries

MODULES = LAYER_MODULES


def number(value: float | None) -> float:
    """A cell's value, NaN where there is none (no TE to divide by): shown as n/a."""
    return float("nan") if value is None else value


def measures(screen) -> tuple[str, str, str]:
    """What the panes show of the effect in front (`t` cycles IE, and DE where the run has it): its name,
    and the queries' mean over the pairs shown and share of their TE."""
    return screen.effect.upper(), queries.mean_of(screen.effect), queries.share_of(screen.effect)
