"""Drop-in modules for inference engines."""
