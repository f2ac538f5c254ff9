"""Our implementations of the taming-transformers modules (key-for-key, op-for-op)."""
