"""Chat and text completions: request bodies, prompt and grammar, engine submission, and
the writers that turn engine events into OpenAI bodies and streams."""
