"""Run the engine and family tests against another transformers release, in a scratch venv.

The engine replays decoder layers and so depends on how transformers calls them; a release can change that
(5.24 renamed `past_key_values` to `cache`). This learns of it the day a release ships:

    python bench/compat.py                          # the newest transformers on the package index
    python bench/compat.py --transformers floor     # the lowest pyproject allows (.ci/run does this)
    python bench/compat.py --transformers 5.10.0    # a given one

The scratch venv sits on top of this one (a .pth line: torch and the rest are shared, not reinstalled) and
gets its own transformers, with whatever tokenizers and hub client that release requires. Exit status: the
tests'.
"""

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/analysis"]


def purelib(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def scratch_venv(where: Path) -> Path:
    """A venv that sees this one's packages, this checkout's editable harmmed_tui included."""
    venv.create(where, with_pip=False)
    here, there = purelib(Path(sys.prefix)), purelib(where)
    (there / "00-base.pth").write_text(f"{here}\n")  # sorts before the editable finder's .pth, which needs it
    for pth in here.glob("__editable__*harmmed_tui*.pth"):
        shutil.copy(pth, there)
    return where / "bin" / "python"


def requirement(version: str) -> str:
    if version == "newest":
        return "transformers"
    if version == "floor":
        deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        version = next(m[1] for d in deps if (m := re.fullmatch(r"transformers>=([\w.]+).*", d)))
    return f"transformers=={version}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transformers", default="newest", help="newest (default), floor, or a version")
    ap.add_argument("--keep", help="build the venv here and keep it (default: a temporary directory)")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (default: -q tests/analysis)")
    args = ap.parse_args()
    where = Path(args.keep or tempfile.mkdtemp(prefix="harmmed-compat-"))
    python = scratch_venv(where)
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--upgrade",
            "--disable-pip-version-check",
            requirement(args.transformers),
        ],
        check=True,
    )
    version = subprocess.run(
        [python, "-c", "import transformers; print(transformers.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"engine tests with transformers {version} ({where})", flush=True)
    code = subprocess.run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", *(args.pytest_args or ["-q", *TESTS])], cwd=ROOT
    ).returncode
    if not args.keep:
        shutil.rmtree(where)
    return code


if __name__ == "__main__":
    sys.exit(main())
