"""remn: robust and efficient memory network for semi-supervised video object segmentation."""
__version__ = "0.1.0"
