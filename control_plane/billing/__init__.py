"""Billing in the control plane: usage intake, finance and tenant views, payment webhooks, the periodic task."""
