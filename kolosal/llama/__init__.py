"""The only package that touches cffi and libllama. Nothing here loads the library at
import time: ``loader.load()`` does, on first use."""
from .adapter import AdapterLoadError, LoraAdapter
from .batch import Batch
from .context import BatchInvariantUnavailableError, Context, ContextParams, DecodeError, DecodeStatus
from .loader import LibraryNotFoundError, load
from .model import InvalidModelFileError, Model, ModelLoadError, ModelParams
from .sampler import Sampler, SamplerSettings
from .vocab import Vocab

__all__ = ["AdapterLoadError", "Batch", "BatchInvariantUnavailableError", "Context", "ContextParams",
           "DecodeError", "DecodeStatus", "InvalidModelFileError", "LibraryNotFoundError", "LoraAdapter",
           "Model", "ModelLoadError", "ModelParams", "Sampler", "SamplerSettings", "Vocab", "load"]
