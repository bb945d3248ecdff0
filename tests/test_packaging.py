"""The wheel a user installs: one import package, working outside the repo, within its import contracts."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel, built from this checkout and installed into a fresh venv outside the repo. The venv sees
    this one's dependencies through a .pth line (torch is large), but not its editable harmmed_tui."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root, ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = root.glob("harmmed_tui-*.whl")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    (_site_packages(env_dir) / "deps.pth").write_text(str(_site_packages(Path(sys.prefix))) + "\n")
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True, capture_output=True
    )
    # a user's own modules named like ours, on the path ahead of everything
    decoys = root / "notebooks"
    (decoys / "analysis").mkdir(parents=True)
    (decoys / "analysis" / "__init__.py").write_text("raise ImportError('the user analysis package')\n")
    (decoys / "db.py").write_text("raise ImportError('the user db module')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(decoys)}
    return wheel, env_dir, decoys, env


def test_wheel_has_one_top_level_package(installed):
    wheel = installed[0]
    names = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in names if not n.endswith(".dist-info")} == {"harmmed_tui"}
    members = zipfile.ZipFile(wheel).namelist()
    assert "harmmed_tui/analysis/organism/model/model.safetensors" in members
    assert "harmmed_tui/analysis/data/builtin_pairs.jsonl" in members
    for shipped in ("advbench.csv", "self_instruct.jsonl", "SOURCE.md", "LICENSE-self_instruct"):
        assert f"harmmed_tui/analysis/data/sets/{shipped}" in members


def test_installed_wheel_runs_beside_user_modules(installed, tmp_path):
    _, env_dir, decoys, env = installed
    db = tmp_path / "runs.db"
    out = subprocess.run(
        [
            env_dir / "bin" / "harmmed-tui",
            "run",
            "--model",
            "default",
            "--max-pairs",
            "2",
            "--json",
            "--db",
            db,
        ],
        cwd=decoys,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["status"] == "done" and result["pairs"] == 2 and result["sites"] > 0
    # the explorer opens on that database and lists the run
    smoke = textwrap.dedent(
        f"""
        import asyncio, harmmed_tui.analysis
        assert harmmed_tui.analysis.__file__.startswith({str(env_dir)!r}), harmmed_tui.analysis.__file__
        from harmmed_tui.tui.app import HarmmedApp
        async def main():
            app = HarmmedApp({str(db)!r})
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause()
                print(type(app.screen).__name__, app.screen.query_one("DataTable").row_count)
        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [env_dir / "bin" / "python", "-c", smoke], cwd=decoys, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["RunsScreen", "1"]


def test_import_contracts(installed):
    """pyproject's import-linter contracts, checked on the installed package (grimp reads real files)."""
    _, env_dir, _, env = installed
    check = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(sys.argv[1], no_cache=True))"
    out = subprocess.run(
        [env_dir / "bin" / "python", "-c", check, ROOT / "pyproject.toml"],
        env={**env, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout
