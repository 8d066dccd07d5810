"""Composition: the `livora` command and the all-in-one app."""
