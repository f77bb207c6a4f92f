"""modules subpackage."""
