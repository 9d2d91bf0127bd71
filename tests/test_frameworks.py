"""The framework registry: optional frameworks stay optional, and each module belongs to one framework."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.nn as nn

import sj_realspike
from sj_realspike.frameworks import BUILTIN, adapter_for, adapters, framework_of

# Modules outside frameworks/ that may import SpikingJelly or its adapter module, and why
# (docs/design.md, "Framework adapters"): Amplitude and the fold-made synapses are SpikingJelly
# StepModules so that functional.set_step_mode reaches them; the demo is a SpikingJelly demo;
# bundles set the rebuilt network's step mode; the package re-exports TernaryParametricLIFNode.
ALLOWED_SPIKINGJELLY_IMPORTS = {
    "sj_realspike.amplitude": {"spikingjelly.activation_based"},
    "sj_realspike.synapses": {"spikingjelly.activation_based"},
    "sj_realspike.demo": {"spikingjelly.activation_based"},
    "sj_realspike.bundle": {"spikingjelly.activation_based"},
    "sj_realspike": {"sj_realspike.frameworks.spikingjelly"},
}


@pytest.mark.parametrize("missing", ["snntorch"])
def test_the_package_imports_and_converts_without_an_optional_framework(missing):
    script = textwrap.dedent(f"""
        import sys
        sys.modules[{missing!r}] = None  # import {missing} raises ModuleNotFoundError
        import torch, torch.nn as nn
        import sj_realspike as rs
        from sj_realspike.frameworks import adapters
        from spikingjelly.activation_based import layer, neuron
        names = [a.name for a in adapters()]
        assert {missing!r} not in names and "spikingjelly" in names, names
        net = nn.Sequential(layer.Linear(4, 3), neuron.IFNode(), layer.Linear(3, 2))
        model = rs.convert_model(net, torch.rand(2, 4) * 4)
        print(len(rs.conversion_report(model).converted))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "1"


def test_builtin_adapters_own_their_modules_only():
    snn = pytest.importorskip("snntorch")
    from spikingjelly.activation_based import neuron

    names = [a.name for a in adapters()]
    assert names[:2] == ["spikingjelly", "snntorch"] and set(names) <= set(BUILTIN)
    assert adapter_for(neuron.LIFNode()).name == "spikingjelly"
    assert adapter_for(snn.Leaky(beta=0.5)).name == "snntorch"
    assert adapter_for(nn.Linear(2, 2)) is None
    assert framework_of(nn.Sequential(nn.Linear(2, 2))) is None


def _spikingjelly_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The modules of SpikingJelly, or of its adapter, that ``source`` (module ``module``) imports.

    Counts ``import``/``from … import`` anywhere in the file (also under ``TYPE_CHECKING`` or inside a
    function), relative ones resolved, and ``importlib.import_module``/``__import__`` of a constant.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")):
            names = [node.args[0].value]
        for name in names:
            if name.split(".")[0] == "spikingjelly" or name.startswith("sj_realspike.frameworks.spikingjelly"):
                found.add(name if name.split(".")[0] != "spikingjelly" else ".".join(name.split(".")[:2]))
                break
    return found


def test_import_finder_sees_every_form_of_import():
    snippets = {
        "import spikingjelly": {"spikingjelly"},
        "import spikingjelly.activation_based.neuron as neuron": {"spikingjelly.activation_based"},
        "from spikingjelly.activation_based import functional": {"spikingjelly.activation_based"},
        "def f():\n    from spikingjelly.activation_based.nir_exchange import from_nir": {"spikingjelly.activation_based"},
        "from .frameworks.spikingjelly import TernaryParametricLIFNode": {"sj_realspike.frameworks.spikingjelly"},
        "from .frameworks import spikingjelly": {"sj_realspike.frameworks.spikingjelly"},
        "importlib.import_module('spikingjelly.activation_based.neuron')": {"spikingjelly.activation_based"},
        "from .frameworks import adapters\nimport torch": set(),
    }
    for source, expected in snippets.items():
        assert _spikingjelly_imports(source, "sj_realspike.lowered") == expected, source
    assert _spikingjelly_imports("from ..lowered import LoweredNeuron", "sj_realspike.frameworks.x") == set()


def test_no_module_outside_frameworks_imports_spikingjelly():
    """SpikingJelly is reached through its adapter: outside frameworks/, only the documented exceptions import it."""
    root = Path(sj_realspike.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "frameworks":
            continue
        is_package = path.name == "__init__.py"
        parts = relative.parts[:-1] if is_package else (*relative.parts[:-1], path.stem)
        module = ".".join(("sj_realspike", *parts))
        imports = _spikingjelly_imports(path.read_text(encoding="utf-8"), module, is_package)
        if imports:
            found[module] = imports
    assert len(list(root.rglob("*.py"))) > 30  # the walk saw the package
    unexpected = {m: sorted(i) for m, i in found.items() if not i <= ALLOWED_SPIKINGJELLY_IMPORTS.get(m, set())}
    assert not unexpected, (f"SpikingJelly imported outside sj_realspike/frameworks/: {unexpected}; ask the "
                            "SpikingJelly adapter (sj_realspike.frameworks.spikingjelly) instead")
    # An exception that no longer imports SpikingJelly leaves the list (and docs/design.md).
    assert found == ALLOWED_SPIKINGJELLY_IMPORTS


def test_step_mode_remedies_come_from_the_adapter():
    """SpikingJelly's switch (functional.set_step_mode) is named only for its networks; snnTorch has none."""
    snn = pytest.importorskip("snntorch")
    import torch

    import sj_realspike as rs
    from sj_realspike.fold import NotConvertedWarning

    class BatchMean(nn.Module):
        def forward(self, s):
            return s - s.mean(0, keepdim=True)  # mixes the samples of a batch

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), snn.Leaky(beta=0.5, init_hidden=True), BatchMean(), nn.Linear(6, 3))
    x = torch.randint(0, 9, (2, 3, 8)).float() / 2
    with pytest.warns(NotConvertedWarning):
        deploy = rs.fold(net, example_input=x[0])
    with pytest.raises(rs.UnsupportedPatternError, match=r"node 'sub': the single-step graph does not compute each "
                       r"sample .* Write the model's forward for one time step's input \[N, \.\.\.\]") as refused:
        rs.lower_for_export(deploy, x)
    assert "set_step_mode" not in str(refused.value)
    by_name = {a.name: a for a in adapters()}
    assert by_name["spikingjelly"].multi_step_remedy() == "functional.set_step_mode(net, 'm')"
    assert by_name["snntorch"].multi_step_remedy() is None
