"""Provisioning runs in the control plane: tenant operations as resumable runs, their API, and the steps they take."""
