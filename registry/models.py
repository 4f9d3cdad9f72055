"""Model registry: models, versions, signed bundles and signing keys."""
