"""The editor: a FastAPI server, its job queue and the single-page app it serves."""
