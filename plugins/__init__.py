"""patentclip.plugins: what the training loop is extended with (datasets, samplers, losses, model configs)."""
