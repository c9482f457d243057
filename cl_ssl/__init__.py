"""cl_ssl: continual self-supervised learning of image representations in JAX/Flax."""

__version__ = "0.1.0"
