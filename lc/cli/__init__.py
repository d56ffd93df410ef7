"""The ``lc`` command: thin wiring of the stages' functions."""
