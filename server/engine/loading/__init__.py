"""Getting a model's weights into the engine: checkpoints, GGUF, dummy shapes, engine directories and `inflightd build`."""
