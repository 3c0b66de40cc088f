"""What generates training data: the DS1 machines."""

from mlds_jax.tasks.machines import (
    INPUT_BITS,
    MACHINES,
    OUTPUT_BITS,
    random_commands,
    run_machine,
)

__all__ = ["INPUT_BITS", "MACHINES", "OUTPUT_BITS", "random_commands", "run_machine"]
