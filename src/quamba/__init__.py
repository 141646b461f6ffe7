"""quamba: post-training quantization of Mamba1 and Mamba2 language models (Quamba, Quamba2)."""
from .config import MambaConfig, shape_config
from .errors import QuambaError
from .models import MambaLM

__version__ = "0.1.0"

__all__ = ["MambaConfig", "MambaLM", "QuambaError", "shape_config", "__version__"]
