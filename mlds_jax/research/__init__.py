"""The researcher's room: open a finished store (`open_dataset`), load nets into PyTorch, export, write the dataset card and release tiers as single files."""
