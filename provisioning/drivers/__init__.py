"""Provisioning drivers: ``local`` (a tenant space in a cell) and ``aws`` (CloudFormation, cross-account roles)."""
