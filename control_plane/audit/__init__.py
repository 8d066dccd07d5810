"""The append-only audit trail of every mutating action."""
