"""Usage-based billing: meters, plans, rating, invoices."""
