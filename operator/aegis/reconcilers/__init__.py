"""Plain decision functions, one module per kind or concern, called by the kopf handlers.

Nothing in this package imports kopf or kubernetes: each function takes models and plain
values (including the current time) and returns a decision that a handler carries out.
For example:

- `schedule`: cron ticks in a time zone (DST), jitter, missed runs, concurrency → `Plan`.
- `retention`: which RecoveryPoints to prune (keepLast + GFS, locks, never-prune rules).
- `naming`: deterministic names and labels of RecoveryPoints, Jobs and their pods.
"""
