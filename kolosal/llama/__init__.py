"""The only package that touches cffi and libllama. Nothing here loads the library at
import time: ``loader.load()`` does, on first use."""
from .batch import Batch
from .context import BatchInvariantUnavailableError, Context, ContextParams, DecodeError, DecodeStatus
from .loader import LibraryNotFoundError, load
from .model import InvalidModelFileError, Model, ModelLoadError, ModelParams
from .sampler import Sampler, SamplerSettings
from .vocab import Vocab

__all__ = ["Batch", "BatchInvariantUnavailableError", "Context", "ContextParams", "DecodeError",
           "DecodeStatus",
           "InvalidModelFileError", "LibraryNotFoundError", "Model", "ModelLoadError",
           "ModelParams", "Sampler", "SamplerSettings", "Vocab", "load"]
