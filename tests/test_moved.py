"""Old import paths (before issue 26's subpackages) still work for one release, and say where each module went.

Each case runs in a fresh interpreter: an old name warns on its first import in a process, and the
torch-free check needs a process that has imported nothing yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_architecture import INFERENCE

from edgeseg._moved import MOVED

REPO = Path(__file__).resolve().parent.parent
# The subpackages that took an old module's name, and that module's new home.
RENAMED = {"train": "loop", "data": "dataset", "runtime": "runners", "infer": "run"}
RENAMED |= {"node": "server", "export": "onnx", "bench": "suite"}


def child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that prints one JSON object; return it."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_every_old_module_path_is_the_moved_module_and_warns() -> None:
    got = child(
        "import importlib, json, sys, warnings\n"
        "from edgeseg._moved import MOVED\n"
        "out = {}\n"
        "for old, new in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    mine = [w for w in caught if issubclass(w.category, DeprecationWarning)\n"
        "            and str(w.message).startswith(old + ' moved to')]\n"
        "    out[old] = [module is importlib.import_module(new), sys.modules[old] is sys.modules[new],\n"
        "                module.__name__, [str(w.message) for w in mine], [w.filename for w in mine]]\n"
        "print(json.dumps(out))\n"
    )
    assert set(got) == set(MOVED)
    for old, (same, one_entry, name, messages, filenames) in got.items():
        assert same and one_entry, f"{old} is not {MOVED[old]} itself"
        assert name == MOVED[old], f"{old}: the module's own name changed to {name}"
        assert len(messages) == 1 and f"moved to {MOVED[old]}" in messages[0], (old, messages)
        assert filenames == ["<string>"], f"{old}: the warning blames {filenames}, not the importing line"


def test_from_old_path_import_and_monkeypatching_either_name() -> None:
    got = child(
        "import json, warnings\n"
        "import edgeseg.io.scans as new\n"
        "name = sorted(n for n in vars(new) if callable(vars(new)[n]) and not n.startswith('_'))[0]\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    exec(f'from edgeseg.scans import {name} as value')\n"
        "import edgeseg.scans as old\n"
        "old.SENTINEL = 7\n"
        "print(json.dumps([value is getattr(new, name), [str(w.message) for w in caught], new.SENTINEL]))\n"
    )
    same, messages, sentinel = got
    assert same, "from edgeseg.scans import X is not edgeseg.io.scans's X"
    assert [m for m in messages if "moved to" in m] == [
        "edgeseg.scans moved to edgeseg.io.scans (issue 26); the old path goes in the next release"
    ]
    assert sentinel == 7, "patching edgeseg.scans did not patch edgeseg.io.scans"


@pytest.mark.parametrize("sub", sorted(RENAMED))
def test_a_subpackage_that_took_an_old_module_name_forwards_its_names(sub: str) -> None:
    """``edgeseg.train.train`` (the module edgeseg.train's function) is ``edgeseg.train.loop.train``, warning;
    a name the old module imported is forwarded from where it lives (``edgeseg.train.UNet``: edgeseg.model)."""
    module = f"edgeseg.{sub}.{RENAMED[sub]}"
    got = child(
        "import importlib, json, warnings\n"
        f"package = importlib.import_module('edgeseg.{sub}')\n"
        f"module = importlib.import_module('{module}')\n"
        "out = {}\n"
        "for name, home in package._MOVED_NAMES.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        value = getattr(package, name)\n"
        "    mine = [w for w in caught if 'moved to' in str(w.message)]\n"
        "    same = value is getattr(module, name) and value is getattr(importlib.import_module(home), name)\n"
        "    out[name] = [home, same, [str(w.message) for w in mine], [w.filename for w in mine]]\n"
        "try:\n    package.no_such_name\nexcept AttributeError:\n    out['no_such_name'] = 'AttributeError'\n"
        "name = sorted(package._MOVED_NAMES)[0]\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    exec(f'from edgeseg.{sub} import {{name}}')\n"
        "out['from_import'] = [str(w.message) for w in caught if 'moved to' in str(w.message)]\n"
        "print(json.dumps(out))\n"
    )
    assert got.pop("no_such_name") == "AttributeError"
    assert len(got.pop("from_import")) == 1, f"`from edgeseg.{sub} import NAME` must warn once"
    assert got, f"edgeseg.{sub} forwards no names"
    assert any(home == module for home, *_ in got.values()), f"edgeseg.{sub} forwards none of {module}'s own names"
    for name, (home, same, messages, filenames) in got.items():
        assert same, f"edgeseg.{sub}.{name} is not {module}.{name} (nor {home}.{name})"
        assert messages == [
            f"edgeseg.{sub}.{name} moved to {home}.{name} (issue 26); the old path goes in the next release"
        ]
        assert filenames == ["<string>"], f"edgeseg.{sub}.{name}: the warning blames {filenames}"


def test_old_paths_of_the_inference_half_load_no_torch() -> None:
    """`import edgeseg.scans` (old) must not bring torch where `import edgeseg.io.scans` does not."""
    old = {new: o for o, new in MOVED.items()}
    names = [old[f"edgeseg.{m}"] for m in INFERENCE if f"edgeseg.{m}" in old]
    forwarded = [s for s in RENAMED if f"{s}.{RENAMED[s]}" in INFERENCE]
    assert names and forwarded
    got = child(
        "import importlib, json, sys, warnings\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        f"for name in {names!r}:\n    importlib.import_module(name)\n"
        f"for sub in {forwarded!r}:\n"
        "    package = importlib.import_module('edgeseg.' + sub)\n"
        "    [getattr(package, name) for name in package._MOVED_NAMES]\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))\n"
    )
    assert got == [], f"old paths of the inference half loaded {got[:5]}"


def test_the_table_of_what_moved_is_printed_from_the_one_mapping() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from edgeseg._moved import table; print(table())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.strip().splitlines()[2:]
    assert len(rows) == len(MOVED)
    for old, new in MOVED.items():
        assert f"| `{old}` | `{new}` |" in rows
