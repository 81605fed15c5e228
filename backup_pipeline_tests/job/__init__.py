"""The orchestration end to end: the backup job, its sensors and schedules, housekeeping, support CLI."""
