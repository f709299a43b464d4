"""The notifier service: webhooks (Slack, signed generic JSON) on approval requests and their
resolution. ``bodies`` builds and signs the messages (pure); ``service`` consumes the decisions
topic, delivers with retries and records every attempt as a NotificationAttempted event."""
