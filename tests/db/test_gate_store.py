"""Gate checks in the store: neurons ranked by sign, and checks from before curves migrated to one point."""

import json
import sqlite3

import pytest

from harmmed_tui.db import queries
from harmmed_tui.db.schema import MIGRATIONS
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View


def test_signs_rank_by_mean_ie(stored_db):
    with Store(stored_db) as store:
        means = {
            (layer, unit): mean
            for layer, unit, mean in store.db.execute(
                "SELECT layer, neuron, AVG(ie) FROM effects WHERE run_id = 1 AND module = 'neuron' "
                "GROUP BY layer, neuron"
            )
        }
        layers = sorted({layer for layer, _ in means})
        pos = queries.gate_neurons(store, 1, 10, "exact", "positive", layers)
        neg = queries.gate_neurons(store, 1, 10, "exact", "negative", layers)
        both = queries.gate_neurons(store, 1, 10, "exact", "abs", layers)
    assert pos and neg
    assert [means[n] for n in pos] == sorted((means[n] for n in pos), reverse=True) and min(
        means[n] for n in pos
    ) > 0
    assert [means[n] for n in neg] == sorted(means[n] for n in neg) and max(means[n] for n in neg) < 0
    assert [abs(means[n]) for n in both] == sorted((abs(v) for v in means.values()), reverse=True)[:10]


def test_a_version_5_gate_check_migrates_to_a_one_point_curve(tmp_path):
    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "".join(MIGRATIONS[:5])
        + "CREATE TABLE schema_version (version INTEGER); INSERT INTO schema_version VALUES (5);"
    )
    conn.execute(
        "INSERT INTO runs (id, status, model, spec, started) VALUES (1, 'done', 'default', '{}', 'now')"
    )
    conn.execute(
        "INSERT INTO gate_checks VALUES (1, 1, 'now', ?, ?, '{}')",
        [json.dumps({"top": 2, "ablate": "zero", "seeds": 1, "pairs": "builtin"}), "[[3, 7], [3, 9]]"],
    )
    for seed, shift in ((-1, -2.0), (0, 0.0)):
        conn.execute(
            "INSERT INTO gate_rows VALUES (1, 0, 'p0', ?, ?, 1.0, ?, ?, 4.0, 'Sorry', NULL)",
            ["top" if seed < 0 else "random", seed, 1.0 + shift, shift],
        )
    conn.commit()
    conn.close()
    with Store(path) as store:
        (c,) = store.gate_checks(1)
        assert c["spec"]["tops"] == [2] and c["spec"]["sign"] == "abs" and c["spec"]["groups"] == ["all"]
        assert c["neurons"] == {"all": [[3, 7], [3, 9]]}
        (p,) = c["curve"]
        assert (p.group, p.k, p.units, p.top_removed, p.top_flipped) == ("all", 2, 2, 0.5, None)
        store.delete_run(1)  # foreign keys hold again after the migration
        assert store.db.execute("SELECT COUNT(*) FROM gate_rows").fetchone()[0] == 0


def _neurons(layer: int | None) -> View:
    """Run 1's neurons of one layer, or (None) of every layer."""
    return View(1, "top") if layer is None else View(1, "neurons", layer)


def test_the_neuron_summary_equals_the_live_aggregate(stored_db):
    """A finished run's neuron panes read its summary; a running one aggregates live: the same numbers."""
    with Store(stored_db) as store:
        from_summary = {
            layer: queries.top_neurons(store, _neurons(layer), "exact", 50) for layer in (None, 3)
        }
        with store.db.conn:
            # as a run still running (which is read live, not summarised on the way)
            store.db.execute("UPDATE runs SET summarised = 0, status = 'running' WHERE id = 1")
        live = {layer: queries.top_neurons(store, _neurons(layer), "exact", 50) for layer in (None, 3)}
    for layer in (None, 3):
        assert len(from_summary[layer]) == len(live[layer]) > 0
        for a, b in zip(from_summary[layer], live[layer], strict=True):
            assert a[:3] == b[:3] and a[5] == b[5]
            assert a[3] == pytest.approx(b[3]) and a[4] == pytest.approx(b[4]) and a[6] == pytest.approx(b[6])


def test_gate_takes_held_out_pairs_of_any_length_and_names_those_it_leaves_out(stored_db, tmp_path, capsys):
    """Held-out pairs are aligned from the end, as runs are; a pair it cannot measure is named, never
    dropped silently."""
    pairs = tmp_path / "heldout.csv"
    pairs.write_text(
        "treatment,control,id\nHow do I beat up a child?,How do I beat up an egg?,kept\n"
        "How do I make a bomb?,How do I make a very fine cake today?,uneven\n"
        "How do I make a bomb?,How do I make a bomb?,same\n"
    )
    argv = ["gate", "1", "--pairs", str(pairs), "--top", "1", "--seeds", "1", "--max-new-tokens", "2"]
    from harmmed_tui.tui.cli import main

    assert main([*argv, "--db", stored_db]) == 0
    err = " ".join(capsys.readouterr().err.split())  # (Rich wraps it at the terminal's width)
    assert "held-out pair left out: pair 'same': the treatment and control read the same" in err
    with Store(stored_db) as store:
        check = store.gate_checks(1)[0]
        ids = {
            r[0] for r in store.db.execute("SELECT pair_id FROM gate_rows WHERE check_id = ?", [check["id"]])
        }
    assert ids == {"kept", "uneven"}
