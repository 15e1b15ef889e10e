"""imagecopy: copy OCI images between registries, mounting blobs wherever the registry allows."""

__version__ = "0.1.0"
