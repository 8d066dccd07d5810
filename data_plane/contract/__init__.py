"""The cell ↔ control-plane contract: versioned tenant config the cell pulls, and keeps."""
