"""The ``cra`` command line."""
