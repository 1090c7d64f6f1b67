"""The product's Django apps, one per concern, in layers (DESIGN.md "Layout", enforced by import-linter)."""
