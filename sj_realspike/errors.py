"""Exceptions raised by sj-realspike passes, and the warning `fold` gives (importing it needs no torch)."""

from __future__ import annotations

__all__ = ["ConfigError", "NotConvertedWarning", "RealSpikeError", "UnsupportedPatternError"]


class RealSpikeError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedPatternError(RealSpikeError, ValueError):
    """A graph pattern that cannot be converted or folded exactly.

    The message names the graph node, the pattern and what to do instead. Raised
    instead of approximating: a fold that is not exact is never applied silently.
    """

    def __init__(self, node: str, reason: str, remedy: str) -> None:
        self.node = node
        self.reason = reason
        self.remedy = remedy
        super().__init__(f"node '{node}': {reason}. {remedy}")


class ConfigError(RealSpikeError, ValueError):
    """An invalid spike configuration or recipe (unknown key, bad value)."""


class NotConvertedWarning(UserWarning):
    """`fold` was given a network without spike amplitudes: it only fused BatchNorm.

    Usually ``convert_model`` was forgotten. Folding a plain network on purpose (to fuse
    BatchNorm, or as ``export_onnx`` does) is fine: filter this warning there.
    """
