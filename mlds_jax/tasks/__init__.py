"""What generates training data: DS1's machines, DS2's trigger, DS3's automata, DS4's digits."""

from mlds_jax.tasks.automata import (
    N_INPUTS,
    N_OUTPUTS,
    STATE_RANGE,
    Automaton,
    from_dict,
    make_automata,
    make_automaton,
    random_inputs,
    run_automaton,
    stack_automata,
    to_dict,
    unstack_automata,
)
from mlds_jax.tasks.machines import (
    INPUT_BITS,
    MACHINES,
    OUTPUT_BITS,
    random_commands,
    run_machine,
)
from mlds_jax.tasks.triggers import (
    INVERTED_STEPS,
    TRIGGER_LENGTH,
    insert_trigger,
    run_machine_with_trigger,
    write_trigger,
)

__all__ = [
    "INPUT_BITS",
    "INVERTED_STEPS",
    "MACHINES",
    "N_INPUTS",
    "N_OUTPUTS",
    "OUTPUT_BITS",
    "STATE_RANGE",
    "TRIGGER_LENGTH",
    "Automaton",
    "from_dict",
    "insert_trigger",
    "make_automata",
    "make_automaton",
    "random_commands",
    "random_inputs",
    "run_automaton",
    "run_machine",
    "run_machine_with_trigger",
    "stack_automata",
    "to_dict",
    "unstack_automata",
    "write_trigger",
]
