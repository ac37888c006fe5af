"""Storage seams: interfaces, in-memory twins, SQL implementations."""
