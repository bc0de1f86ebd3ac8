"""The spine of medguard: settings, Spark session factory, Delta lake adapter, CLI and end-to-end runner."""
