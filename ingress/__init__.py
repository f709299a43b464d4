"""Identity verification, the HTTP ingress, the CI client and ``querytrail submit``."""
