"""HTTP blueprints, one per API area."""
