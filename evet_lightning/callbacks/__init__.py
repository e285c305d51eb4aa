"""callbacks subpackage."""
