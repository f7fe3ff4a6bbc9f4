"""llama-server's LoRA adapter endpoints, and the ``lora`` fields of request bodies."""
