"""The NumPy reference backend: the meaning of every catalogue kernel."""
