"""Built-in noise methods, one per file; each is registered in pyproject.toml's entry points."""
