"""moerm-lite: personalized reward scoring with a sparse Mixture-of-Experts reward model.

The runtime needs onnxruntime, tokenizers, numpy and scipy only (no torch).
"""

from .catalog import Catalog
from .folder import ModelFolderError
from .model import RewardModel
from .personalize import UserProfile, fit_map

__all__ = ["Catalog", "ModelFolderError", "RewardModel", "UserProfile", "fit_map"]
__version__ = "0.1.0"
