"""The reference implementation of the course's homework 1; the subpackages are its concerns (docs/layout.md)."""
