import shutil

import pytest

from harmmed_tui.analysis.gate import GateSpec
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db.runner import check_gate, execute
from harmmed_tui.db.store import Store


@pytest.fixture(scope="session")
def _stored_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("stored") / "runs.db"
    spec = RunSpec(
        max_pairs=2,
        modules=("resid", "mlp", "neuron"),
        layers="-1",
        positions="last,*",
        neuron_positions="last,*",
    )
    with Store(path) as store:
        execute(spec, store)
        execute(spec, store)
        check_gate(store, 1, GateSpec(tops=(1, 5), seeds=1, max_new_tokens=4))
    return path


@pytest.fixture
def stored_db(_stored_db, tmp_path) -> str:
    """A copy of a database with two runs of the embedded model (layer, `*` and neuron rows) and a gate
    check of run 1."""
    return str(shutil.copy(_stored_db, tmp_path / "runs.db"))
