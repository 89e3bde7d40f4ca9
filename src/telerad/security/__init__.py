"""Identity, access control and the audit trail (HIPAA 164.312 (a), (b), (d); IHE ATNA)."""
