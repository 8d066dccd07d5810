"""The payments port: an embedded driver (invoices payable locally) and a Stripe driver."""

from billing.payments import embedded, stripe_driver  # noqa: F401 (register the drivers)
from billing.payments.port import payment_drivers

__all__ = ["payment_drivers"]
