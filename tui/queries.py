"""The read queries behind the Runs and Explore screens (parameterised SQL; `pair=None` averages over pairs)."""

from __future__ import annotations

from db.store import Store

RUN_COLUMNS = ("id", "status", "model", "pairs", "sites", "rows", "mean TE", "started")


def run_cells(run: dict) -> list[str]:
    """One row of the run history (from Store.runs), as the Runs screen and `harmmed-tui runs` show it."""
    te = f"{run['mean_te']:.3f}" if run["mean_te"] is not None else ""
    fields = ("id", "status", "model", "n_pairs", "n_sites", "n_rows")
    return [*(str(run[f]) for f in fields), te, run["started"]]


def _pair_filter(pair: int | None) -> tuple[str, list]:
    return ("AND pair = ?", [pair]) if pair is not None else ("", [])


def layer_effects(store: Store, run_id: int, pair: int | None) -> dict[int, dict[str, float]]:
    """IE of each module patched at every position at once ('*'), per layer."""
    where, args = _pair_filter(pair)
    sql = f"""SELECT layer, module, AVG(ie) FROM effects WHERE run_id = ? AND position = -1
              AND module != 'neuron' {where} GROUP BY layer, module"""
    out: dict[int, dict[str, float]] = {}
    for layer, module, ie in store.db.execute(sql, [run_id, *args]).fetchall():
        out.setdefault(layer, {})[module] = ie
    return out


def module_grid(store: Store, run_id: int, layer: int, pair: int | None) -> dict[str, dict[int, float]]:
    where, args = _pair_filter(pair)
    sql = f"""SELECT module, position, AVG(ie) FROM effects WHERE run_id = ? AND layer = ? AND module != 'neuron'
              {where} GROUP BY module, position"""
    out: dict[str, dict[int, float]] = {}
    for module, position, ie in store.db.execute(sql, [run_id, layer, *args]).fetchall():
        out.setdefault(module, {})[position] = ie
    return out


def top_neurons(store: Store, run_id: int, layer: int, pair: int | None, limit: int = 200, offset: int = 0):
    """Neurons of a layer by |IE|, one page at a time."""
    where, args = _pair_filter(pair)
    sql = f"""SELECT neuron, position, AVG(ie) AS ie, COUNT(*) FROM effects WHERE run_id = ? AND layer = ?
              AND module = 'neuron' {where} GROUP BY neuron, position ORDER BY ABS(AVG(ie)) DESC LIMIT ? OFFSET ?"""
    return store.db.execute(sql, [run_id, layer, *args, limit, offset]).fetchall()
