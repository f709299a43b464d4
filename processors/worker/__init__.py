"""The worker service: the faust app that verifies, decides and holds for approval.

``app`` wires faust to ``handlers`` (one method per agent or timer); ``runtime`` holds its
long-lived dependencies (keys, policy, warehouse catalog); ``reconcile`` finds requests the stream
skipped. The decisions themselves are ``processors.decision``'s pure functions.
"""
