"""Pictures a person reads: heatmap panels and sheets, metric plots, curves."""
