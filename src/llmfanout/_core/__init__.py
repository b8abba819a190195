"""The scheduler: tasks, the cap, attempts under a retry policy, the executor, sync entry."""
