"""mamba_export: Mamba (selective SSM) built to be compiled and exported.

Public API: :class:`MambaConfig`, :class:`MambaLM`, :class:`MambaState`, the mamba_ssm-compatible
functional ops and :func:`generate`. Importing the package registers ``torch.ops.mamba_export.*``.
"""

from .config import ConfigError, MambaConfig
from .checkpoint import CheckpointError
from .generate import generate
from .model import MambaLM, MambaState
from .ops import (
    causal_conv1d_fn,
    causal_conv1d_update,
    mamba2_state_update,
    mamba_chunk_scan_combined,
    selective_scan_fn,
    selective_state_update,
)

__all__ = [
    "CheckpointError", "ConfigError", "MambaConfig", "MambaLM", "MambaState", "generate",
    "causal_conv1d_fn", "causal_conv1d_update", "selective_scan_fn", "selective_state_update",
    "mamba_chunk_scan_combined", "mamba2_state_update",
]
__version__ = "0.1.0"
