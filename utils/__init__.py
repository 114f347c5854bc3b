"""Small shared helpers: atomic file output, visualisation, metrics, distributed glue."""
