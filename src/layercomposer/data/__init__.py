"""Training data: the scene format shared by the sprites world, photo tools and real data."""
