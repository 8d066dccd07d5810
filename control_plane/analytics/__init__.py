"""The control plane's part of analytics: API-key grants for cells, and cell tokens for people."""
