"""The seeds' APIs, kept compatible: each module is a thin layer over our routes, named after
the API it keeps (the seed documents are in the design's ``seeds/`` folder)."""
