"""The JSON API under ``/api``: sign-in and sessions, users, tokens, the audit trail."""
