"""OpenAI's embeddings API on an embedding engine."""
