"""Pluggable benchmark suites: each is a registered dataclass whose defaults are the
published protocol."""
