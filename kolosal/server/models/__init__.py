"""OpenAI's models (list, retrieve) and llama-server's tokenize and detokenize."""
