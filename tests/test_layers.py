"""The layering is enforced: a wrong import fails `make lint`, and the wheel ships the product only.

The contracts live in pyproject.toml ([tool.importlinter]); docs/ARCHITECTURE.md draws them.
Each case copies the packages into a scratch tree, adds one import that breaks a rule, and runs
the same `lint-imports` that `make lint` runs there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "drivers", "hil", "bench", "tests", "platformkit")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # The scratch tree comes first on the path, ahead of the editable install of the checkout.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_tree(tmp_path_factory.mktemp("layers") / "clean")


def test_the_tree_as_it_is_keeps_every_contract(clean_tree: Path) -> None:
    result = _lint(clean_tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


WRONG_IMPORTS = [
    # (module that gets the import, the import, the contract that must catch it, shown import)
    (
        "drivers/button/codec.py",
        "import gateway.app.daemon",
        "core <- drivers",
        "drivers.button.codec -> gateway.app.daemon",
    ),
    (
        "gateway/core/clock.py",
        "import drivers.watch.codec",
        "core <- drivers",
        "gateway.core.clock -> drivers.watch.codec",
    ),
    (
        "gateway/store/sink.py",
        "import gateway.uplink",
        "core <- drivers",
        "gateway.store.sink -> gateway.uplink",
    ),
    (
        "gateway/app/daemon.py",
        "import gateway.cli.main",
        "core <- drivers",
        "gateway.app.daemon -> gateway.cli.main",
    ),
    (
        "gateway/app/daemon.py",
        "import hil.sim.receiver",
        "never imports the simulated rig",
        "gateway.app.daemon -> hil.sim.receiver",
    ),
    (
        "drivers/watch/codec.py",
        "import tests.support.reliability",
        "never imports the simulated rig",
        "drivers.watch.codec -> tests.support.reliability",
    ),
    (
        "drivers/watch/codec.py",
        "import drivers.button.codec",
        "each device kind stands alone",
        "drivers.watch.codec -> drivers.button.codec",
    ),
    (
        "bench/common.py",
        "import tests.support.reliability",
        "without the test suite",
        "bench.common -> tests.support.reliability",
    ),
]


@pytest.mark.parametrize(("module", "line", "contract", "shown"), WRONG_IMPORTS)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str, shown: str
) -> None:
    tree = _copy_tree(tmp_path / "tree")
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}  # a wrong import\n")
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken = [text for text in result.stdout.splitlines() if text.endswith("BROKEN")]
    assert any(contract in text for text in broken), result.stdout
    assert shown in result.stdout, result.stdout


def test_the_wheel_holds_the_product_only(tmp_path: Path) -> None:
    """Built from pyproject.toml as a package index would: gateway and drivers, nothing else."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("gateway", "drivers", "hil", "bench", "tests"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("carebed-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"gateway", "drivers"}
    for name in names:
        parts = Path(name).parts
        assert not {"sim", "tests", "test", "bench", "hil"} & set(parts), name
        assert not Path(name).name.startswith("test_"), name
    # What the daemon needs at run time travels with it.
    assert "gateway/store/schema/001_initial.sql" in names
    assert "gateway/store/schema/002_integrity.sql" in names
    assert "gateway/py.typed" in names
    assert "gateway/cli/main.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "carebed = gateway.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_drivers_load_without_the_contract_models_or_the_configuration() -> None:
    """A driver needs the kinds and the clock, not pydantic (the event models, the config)."""
    code = (
        "import sys\n"
        "import drivers.button.serial, drivers.watch.fleet, drivers.camera.policy\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'gateway')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = result.stdout
    assert "pydantic" not in loaded, loaded
    assert "gateway.app" not in loaded, loaded
    assert "gateway.core.events" not in loaded, loaded


def test_the_closed_kind_type_names_every_kind_of_the_contract() -> None:
    from typing import get_args

    from gateway.core.events import KIND_DATA
    from gateway.core.kinds import AlarmKind, EventKind

    def flatten(tp: object) -> set[str]:
        names: set[str] = set()
        for arg in get_args(tp):
            names |= {arg} if isinstance(arg, str) else flatten(arg)
        return names

    assert flatten(EventKind) == set(KIND_DATA)
    assert flatten(AlarmKind) == {kind for kind in KIND_DATA if kind.startswith("alarm.")}
