"""Key operations over the gate: lifecycle work, distribution and reconciliation."""
