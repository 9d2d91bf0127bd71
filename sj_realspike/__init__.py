"""Real Spike and Ternary Spike for SpikingJelly.

Train with learnable spike amplitudes (``convert_model``), then fold them into the
synapse weights (``fold``) so the deployed network sends binary or ternary spikes.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule defining it. Submodules are imported on first access, so
# `import sj_realspike` (and `sj-realspike --help`) does not pay for torch and onnx.
_EXPORTS = {
    "Amplitude": "amplitude",
    "amplitude_parameters": "amplitude",
    "BundleError": "bundle",
    "load_bundle": "bundle",
    "save_bundle": "bundle",
    "SpikeConfig": "config",
    "SpikeSpec": "config",
    "convert_model": "convert",
    "EnergyReport": "energy",
    "LayerEnergy": "energy",
    "ModelEnergy": "energy",
    "energy_report": "energy",
    "ConfigError": "errors",
    "NotConvertedWarning": "errors",
    "RealSpikeError": "errors",
    "UnsupportedPatternError": "errors",
    "ExportError": "export",
    "export_onnx": "export",
    "fold": "fold",
    "fuse_batchnorm": "fold",
    "lower_for_export": "lowering",
    "TernaryParametricLIFNode": "frameworks.spikingjelly",
    "NIR_DT": "nir_export",
    "export_nir": "nir_export",
    "import_nir": "nir_export",
    "ConversionReport": "report",
    "FoldReport": "report",
    "conversion_report": "report",
    "fold_report": "report",
    "OnnxRunner": "runtime",
    "DiagonalSynapse": "synapses",
    "UnsharedConv2d": "synapses",
    "VerifyReport": "verify",
    "exciting_input": "verify",
    "verify": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines public ``name`` on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sj_realspike' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Keeps ``sj_realspike.fold`` and ``.verify`` the functions when their submodules load.

    Importing a submodule binds it as an attribute of the package; for ``fold`` and
    ``verify`` that would hide the function of the same name (the eager imports used to
    rebind it right after).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what static checkers and IDEs see: the eager imports
    from .amplitude import Amplitude, amplitude_parameters
    from .bundle import BundleError, load_bundle, save_bundle
    from .config import SpikeConfig, SpikeSpec
    from .convert import convert_model
    from .energy import EnergyReport, LayerEnergy, ModelEnergy, energy_report
    from .errors import ConfigError, RealSpikeError, UnsupportedPatternError
    from .export import ExportError, export_onnx
    from .fold import fold, fuse_batchnorm
    from .frameworks.spikingjelly import TernaryParametricLIFNode
    from .lowering import lower_for_export
    from .nir_export import NIR_DT, export_nir, import_nir
    from .report import ConversionReport, FoldReport, conversion_report, fold_report
    from .runtime import OnnxRunner
    from .synapses import DiagonalSynapse, UnsharedConv2d
    from .verify import VerifyReport, exciting_input, verify
