"""Kolosal Server: an OpenAI-compatible inference server on a locally built libllama."""
__version__ = "0.1.0"
