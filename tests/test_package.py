"""The package map (gla_np/__init__.py): the folders of the reading order, one path per module.

A module's path is its file's (``gla_np.recurrence.chunked``); the public modules are also names
of the package (``from gla_np import chunked``), private ones are not; flat module paths such as
``gla_np.chunked`` or ``gla_np.model`` do not import.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import gla_np

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("ops", "recurrence", "layers", "training")


def _modules_on_disk():
    return [(group, p.stem) for group in GROUPS
            for p in sorted((ROOT / "gla_np" / group).glob("*.py")) if p.stem != "__init__"]


def test_every_public_module_is_a_name_of_the_package_and_no_private_one_is():
    for group, name in _modules_on_disk():
        module = importlib.import_module(f"gla_np.{group}.{name}")
        if name.startswith("_") or name in ("train", "sample"):  # commands: python -m gla_np.<name>
            assert getattr(gla_np, name, None) is not module, f"gla_np.{name}: a second path"
        else:
            assert getattr(gla_np, name, None) is module, f"gla_np has no name {name}"


@pytest.mark.parametrize("flat", ["gla_np.chunked", "gla_np.model", "gla_np._chunk_tiles",
                                  "gla_np._train_checks", "gla_np.sigmoid"])
def test_flat_module_paths_do_not_import(flat):
    # a fresh process: nothing imported by this suite can put a module under the flat name
    code = (f"import importlib, sys\nimport gla_np\n"
            f"try:\n    importlib.import_module({flat!r})\n"
            f"except ModuleNotFoundError as e:\n    print(e)\n"
            f"print({flat!r} in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"No module named {flat!r}", "False"], done.stdout


def test_sys_modules_holds_each_module_under_its_file_path_only():
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts)
             for p in (ROOT / "gla_np").rglob("*.py")}
    files = {f[: -len(".__init__")] if f.endswith(".__init__") else f for f in files}
    for name, module in list(sys.modules.items()):
        if name == "gla_np" or name.startswith("gla_np."):
            assert name in files, f"sys.modules[{name!r}] is no file of the package"
            assert module.__name__ == name, f"sys.modules[{name!r}] is {module.__name__}"


def test_the_training_command_file_is_not_the_training_module():
    import gla_np.train as command
    from gla_np.training import train
    assert command is not train and not hasattr(command, "main")
    with pytest.raises(AttributeError, match=r"'main'; the training module is gla_np\.training\."):
        command.main


def test_derivation_pages_mirror_the_folders():
    pages = ROOT / "docs" / "derivations"
    assert not list(pages.glob("*.md")), "a derivation page sits outside the step folders"
    for folder in pages.iterdir():
        assert folder.name in GROUPS, f"docs/derivations/{folder.name} is no step of gla_np"


def test_the_testing_package_exports_every_public_name_of_its_modules():
    # users import from gla_np.testing only; its modules are where each name is written
    import ast

    import gla_np.testing as testing
    written = {}
    for p in sorted((ROOT / "gla_np" / "testing").glob("*.py")):
        if p.stem == "__init__":
            continue
        module = importlib.import_module(f"gla_np.testing.{p.stem}")
        for node in ast.parse(p.read_text()).body:
            targets = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                       [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])
            for name in targets:
                if not name.startswith("_"):
                    written[name] = getattr(module, name)
    assert sorted(testing.__all__) == sorted(written), "gla_np.testing.__all__ is not its map"
    for name, obj in written.items():
        assert getattr(testing, name) is obj, f"gla_np.testing.{name} is another object"
