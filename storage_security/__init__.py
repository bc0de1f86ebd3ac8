"""Layer 2: PHI detection, masking, key providers, envelope encryption and the tamper-evident audit log."""
