"""Model components: text encoders and the registry of named configs."""
