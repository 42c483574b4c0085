"""``lithops.util``."""
