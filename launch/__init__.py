"""patentclip.launch: running the training (flags, model, step, loop, checkpoints, signals, demo)."""
