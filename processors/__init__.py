"""Stream processing: the pure decision core (``decision``) and the two services that run it
(``worker``: faust app; ``executor``: the Snowflake side)."""
