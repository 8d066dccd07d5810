"""The Segment-compatible ingestion API of a cell."""
