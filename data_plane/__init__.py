"""The data plane cell: ingestion, stream, pipeline, lake, warehouse and the APIs over them."""
