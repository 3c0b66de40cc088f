"""The configuration room: frozen dataclasses for a dataset, its recipe and run options, read
from TOML with errors that name the key."""
