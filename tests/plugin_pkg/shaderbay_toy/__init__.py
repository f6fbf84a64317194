"""A toy shaderbay backend plugin: the NumPy reference backend under another name."""
