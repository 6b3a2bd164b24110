"""The package map (gla_np/__init__.py): the folders of the reading order, and the flat module
paths of version 0.1 still naming the same module objects."""

import importlib
import subprocess
import sys
from pathlib import Path

import gla_np
import gla_np.chunked  # the flat paths of version 0.1, imported the ways users wrote them
import gla_np.train
import gla_np.training.train
from gla_np.model import GLAConfig
from gla_np.sigmoid import stable_sigmoid

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("ops", "recurrence", "layers", "training")


def test_every_old_flat_path_imports_to_the_module_in_its_folder():
    for group, names in gla_np.FLAT_PATHS_0_1.items():
        for name in names:
            old = importlib.import_module(f"gla_np.{name}")
            new = importlib.import_module(f"gla_np.{group}.{name}")
            assert old is new, f"gla_np.{name} is not gla_np.{group}.{name}"
            assert getattr(gla_np, name) is new, f"gla_np has no attribute {name}"
    assert gla_np.chunked is gla_np.recurrence.chunked
    assert gla_np.train is gla_np.training.train
    assert GLAConfig is gla_np.layers.model.GLAConfig
    assert stable_sigmoid is gla_np.ops.sigmoid.stable_sigmoid
    assert gla_np.linear is gla_np.ops.linear


def test_the_flat_paths_list_every_module_of_the_folders():
    for group in GROUPS:
        on_disk = {p.stem for p in (ROOT / "gla_np" / group).glob("*.py")} - {"__init__"}
        # train has its own flat file; text and sample came after 0.1 and have no flat path
        listed = set(gla_np.FLAT_PATHS_0_1[group]) | (
            {"train", "text", "sample"} if group == "training" else set())
        assert on_disk == listed, f"gla_np/{group}: {sorted(on_disk ^ listed)}"


def test_old_flat_paths_work_in_a_fresh_interpreter():
    # a fresh process, so the aliases are set by `import gla_np.<name>` alone, not by this suite
    code = ("import gla_np.model, gla_np.chunked, gla_np.layers.model\n"
            "from gla_np.sigmoid import stable_sigmoid\n"
            "import gla_np\n"
            "assert gla_np.model is gla_np.layers.model and gla_np.chunked.forward\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_derivation_pages_mirror_the_folders():
    pages = ROOT / "docs" / "derivations"
    assert not list(pages.glob("*.md")), "a derivation page sits outside the step folders"
    for folder in pages.iterdir():
        assert folder.name in GROUPS, f"docs/derivations/{folder.name} is no step of gla_np"
