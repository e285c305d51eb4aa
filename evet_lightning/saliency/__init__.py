"""saliency subpackage."""
