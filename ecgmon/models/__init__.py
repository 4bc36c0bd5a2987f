"""Networks, datasets, training and export (later issues)."""
