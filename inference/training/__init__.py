"""Training the demo model: the small VQ tokenizer first, then the language model."""
