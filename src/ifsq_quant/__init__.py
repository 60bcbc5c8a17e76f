"""Finite Scalar Quantization (FSQ) and iFSQ for PyTorch: exact, drop-in, fast."""

from .activations import Activation, get_activation
from .bins import LAYOUTS
from .quantizer import FSQ, iFSQ
from .residual import GroupedResidualFSQ, ResidualFSQ
from .usage import CodeUsage

__version__ = "0.1.0"

__all__ = ["FSQ", "iFSQ", "ResidualFSQ", "GroupedResidualFSQ", "CodeUsage", "Activation", "get_activation", "LAYOUTS", "__version__"]
