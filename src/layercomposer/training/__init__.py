"""Training: locking-aware sampling, batching, the trainer and the VAE stage."""
