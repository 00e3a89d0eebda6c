"""task_core_entry.task_state values of the CRIU image format (core-PID.img)."""

TASK_ALIVE = 1
TASK_DEAD = 2          # what CRIU writes for a zombie, with its exit_code
TASK_STOPPED = 3
