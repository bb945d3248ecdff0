"""The drill levels of Explore, a module each: every one draws its table and plot for the screen's run,
pair or category, scale and place (`draw(screen, table, plt, te, checks)`), and ExploreScreen keeps the
navigation, filters and keys."""

MODULES = ("resid", "attn", "mlp")


def number(value: float | None) -> float:
    """A cell's value, NaN where there is none (no TE to divide by): shown as n/a."""
    return float("nan") if value is None else value
