"""Usage: the cell's ledger of accepted events and their outcomes, reconciliation, and pushing usage."""

from data_plane.usage.ledger import HourCounts, Outcome, UsageLedger, hour_of, user_key
from data_plane.usage.reconcile import Reconciled, reconcile

__all__ = ["HourCounts", "Outcome", "Reconciled", "UsageLedger", "hour_of", "reconcile", "user_key"]
