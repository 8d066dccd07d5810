"""Pipeline processing steps (dedup, enrichment, identity stitching, sessions) as plain, stream-free modules."""
