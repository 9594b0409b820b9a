"""satlab: similarity of neural architectures by adversarial attack transferability (SAT)."""

from satlab.utils import SatlabError

__version__ = "0.1.0"
__all__ = ["SatlabError", "__version__"]
