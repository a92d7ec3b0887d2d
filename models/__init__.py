"""Networks, the registry of trained models and their weight files."""
