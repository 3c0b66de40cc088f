"""The training room: the networks, a task's training data, and the population that trains
thousands of nets at once (the one vmap + jit site, and the CPU kernel); it knows no Zarr."""
