"""Tool calling: parsers of model output, and tools through the chat template."""
