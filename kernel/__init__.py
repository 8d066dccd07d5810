"""Shared infrastructure for every Livora plane: settings, logging, database, errors, ports."""
