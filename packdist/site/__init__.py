"""The site: its home, content library, importer and HTTP server."""
