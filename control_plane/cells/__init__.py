"""What the control plane tells data-plane cells: the desired state of their tenants."""
