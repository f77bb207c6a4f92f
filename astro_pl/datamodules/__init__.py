"""datamodules subpackage."""
