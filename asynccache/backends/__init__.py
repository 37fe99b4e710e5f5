"""Storage backends. Import concrete classes from their modules (imported lazily)."""
