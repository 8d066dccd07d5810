"""Versioned tenant blueprints per industry."""
