"""Real Spike and Ternary Spike for SpikingJelly.

Train with learnable spike amplitudes (``convert_model``), then fold them into the
synapse weights (``fold``) so the deployed network sends binary or ternary spikes.
"""

from .amplitude import Amplitude, amplitude_parameters
from .bundle import BundleError, load_bundle, save_bundle
from .config import SpikeConfig, SpikeSpec
from .convert import convert_model
from .energy import EnergyReport, LayerEnergy, ModelEnergy, energy_report
from .errors import ConfigError, RealSpikeError, UnsupportedPatternError
from .export import ExportError, export_onnx
from .fold import fold, fuse_batchnorm
from .lowering import lower_for_export
from .neurons import TernaryParametricLIFNode
from .nir_export import NIR_DT, export_nir, import_nir
from .report import ConversionReport, FoldReport, conversion_report, fold_report
from .runtime import OnnxRunner
from .synapses import DiagonalSynapse, UnsharedConv2d
from .verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "Amplitude",
    "BundleError",
    "ConfigError",
    "ConversionReport",
    "DiagonalSynapse",
    "EnergyReport",
    "ExportError",
    "FoldReport",
    "LayerEnergy",
    "ModelEnergy",
    "NIR_DT",
    "OnnxRunner",
    "RealSpikeError",
    "SpikeConfig",
    "SpikeSpec",
    "TernaryParametricLIFNode",
    "UnsharedConv2d",
    "UnsupportedPatternError",
    "VerifyReport",
    "amplitude_parameters",
    "conversion_report",
    "convert_model",
    "energy_report",
    "export_nir",
    "export_onnx",
    "fold",
    "fold_report",
    "fuse_batchnorm",
    "import_nir",
    "load_bundle",
    "lower_for_export",
    "save_bundle",
    "verify",
]
