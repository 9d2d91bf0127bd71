"""The framework registry: optional frameworks stay optional, and each module belongs to one framework."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch.nn as nn

from sj_realspike.frameworks import BUILTIN, adapter_for, adapters, framework_of


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
