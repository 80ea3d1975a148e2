"""Pure builders of Kubernetes objects: spec values in, manifest dicts out; no API calls, no clock."""
