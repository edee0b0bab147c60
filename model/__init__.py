"""Pure PyTorch and algorithms: tokenizer, transformer parts, generation, losses, quantization."""
