"""The shipped run configs (the top-level configs/ folder), installed as ``cl_ssl.configs``."""
