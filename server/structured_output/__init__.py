"""Grammar-constrained decoding: request checks (api process) and grammar compilation, matchers and token masks (engine process)."""
