"""Use cases: runs, decisions, deadlines, parallel waits, policies' groups, reminders, notifications, queries, audit,
auth."""
