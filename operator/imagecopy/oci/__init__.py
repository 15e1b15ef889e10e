"""Registry protocol: references, media types, descriptors, auth and the HTTP client."""
