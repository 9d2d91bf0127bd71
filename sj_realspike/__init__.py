"""Real Spike and Ternary Spike for SpikingJelly.

Train with learnable spike amplitudes (``convert_model``), then fold them into the
synapse weights (``fold``) so the deployed network sends binary or ternary spikes.
"""

from .amplitude import Amplitude, amplitude_parameters
from .bundle import BundleError, load_bundle, save_bundle
from .config import SpikeConfig, SpikeSpec
from .convert import convert_model
from .errors import ConfigError, RealSpikeError, UnsupportedPatternError
from .fold import fold, fuse_batchnorm
from .neurons import TernaryParametricLIFNode
from .report import ConversionReport, FoldReport, conversion_report, fold_report
from .synapses import DiagonalSynapse, UnsharedConv2d

__version__ = "0.1.0"

__all__ = [
    "Amplitude",
    "BundleError",
    "ConfigError",
    "ConversionReport",
    "DiagonalSynapse",
    "FoldReport",
    "RealSpikeError",
    "SpikeConfig",
    "SpikeSpec",
    "TernaryParametricLIFNode",
    "UnsharedConv2d",
    "UnsupportedPatternError",
    "amplitude_parameters",
    "conversion_report",
    "convert_model",
    "fold",
    "fold_report",
    "fuse_batchnorm",
    "load_bundle",
    "save_bundle",
]
