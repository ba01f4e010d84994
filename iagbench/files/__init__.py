"""Files: content fingerprints, the cache folder, JSON-lines reading."""
