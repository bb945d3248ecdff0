"""Every export level, per pair and aggregated, in every format; parquet has one type per column."""

import io
import json

import pyarrow.parquet as pq
import pytest

from harmmed_tui.db import export
from harmmed_tui.db.store import Store

LEVELS = [
    ("layer", False),
    ("layer", True),
    ("neuron", False),
    ("neuron", True),
    ("gate", False),
    ("gate", True),
]


@pytest.mark.parametrize(("level", "aggregated"), LEVELS)
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_every_level_and_format(stored_db, level, aggregated, fmt):
    with Store(stored_db) as store:
        rows = export.table(store, 1, level, aggregated)
        data = export.render(rows, fmt)
    assert rows
    if level != "gate":
        assert {r["position"] for r in rows} & {"*"} and any(isinstance(r["position"], int) for r in rows)
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == len(rows) and table.column_names == list(rows[0])
        if level != "gate":  # token indices and `*` in one column: text, as csv writes it
            assert str(table.schema.field("position").type) == "string"
            assert set(table.column("position").to_pylist()) == {str(r["position"]) for r in rows}
            assert str(table.schema.field("ie_mean" if aggregated else "ie").type) == "double"
    elif fmt == "json":
        assert json.loads(data) == json.loads(json.dumps(rows))
