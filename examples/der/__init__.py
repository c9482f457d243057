"""DER for self-supervised continual learning, as a user's own strategy (``der.py``) with its
config (``config.py``)."""
