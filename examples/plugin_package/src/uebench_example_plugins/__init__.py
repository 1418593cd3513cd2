"""Example uebench plugins (see docs/plugins.md)."""
