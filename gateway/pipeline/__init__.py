"""What happens to each socket read, with no asyncio and no SQL: routing per channel,
decoding, the fast lane, judging in the core, effects turned into commands and rows for
storage, and the timer sweeps. The clock and the command id source are passed in.

- gateway: `Gateway`, the wiring and `handle` (one socket read)
- ingest: routing and decoding into columns, events, status, acks and rejects
- fast_lane: instant leaks cut as a read arrives, ahead of their turn
- actions: effects turned into valve commands, alarms, work orders, notices, audit rows
- ticks: sweeps in parts, command resends and escalation
- outbox: the batch being filled and its hand-over to the writer
- metrics: the Prometheus metrics
"""
