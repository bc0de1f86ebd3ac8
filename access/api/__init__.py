"""The HTTP front of layer 4: the FastAPI application ``medguard serve`` runs (diagnoses, CDS Hooks, queries)."""
