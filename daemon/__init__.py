"""The ``spoke`` edge daemon and its command line."""
