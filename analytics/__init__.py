"""Layer 3: diagnostic models on Spark, hardened against poisoning and evasion, signed and monitored."""
