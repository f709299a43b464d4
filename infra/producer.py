"""Alias kept for the name used in TEAM.md: the clients live in ``infra.clients``."""

from infra.clients import KafkaUnavailableError, make_consumer, make_producer, poll_messages, produce_sync

__all__ = ["KafkaUnavailableError", "make_consumer", "make_producer", "poll_messages", "produce_sync"]
