"""Evaluation: the sprites world (known targets) and, later, real photos."""
