"""The researcher's room: open a finished store (`open_dataset`), load its nets into PyTorch,
export them, and write the dataset card."""
