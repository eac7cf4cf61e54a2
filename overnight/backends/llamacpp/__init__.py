"""The embedded model: a GGUF file run in process by llama.cpp (llama-cpp-python).

One job a module: `model` (loading weights, tokens, chat template), `weights` (the
batched Q8_0 copy of the default model), `reader` and `params` (checking request
bodies), `endpoints` and `embeddings` (each endpoint's plan and answer), `sampling`,
`grammar` (response_format), `jobs` and `decoder` (the continuous-batching thread),
and `backend` (the `Backend` the engine sees).
"""

from overnight.backends.llamacpp.backend import LlamaCppBackend
from overnight.backends.llamacpp.model import LocalModelUnavailable, default_model_path

__all__ = ["LlamaCppBackend", "LocalModelUnavailable", "default_model_path"]
