"""The source readers, one module per input format, and the parsing they share."""
