"""hepray: ROOT files to images to distributed training on Ray."""

__version__ = "0.1.0"
