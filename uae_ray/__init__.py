"""uae-ray: self-supervised anatomical embeddings for CT/MR over whole archives."""
__version__ = "0.1.0"
