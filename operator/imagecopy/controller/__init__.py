"""The Kubernetes operator: Kopf handlers (thin) → the ImageCopy service → the copy engine."""
