"""Starting real services locally (Kafka in KRaft mode, the fakesnow Snowflake emulator)."""
