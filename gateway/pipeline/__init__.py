"""What happens to each socket read, with no asyncio and no SQL: routing per channel,
decoding, the fast lane, judging in the core, effects turned into commands and rows for
storage, and the timer sweeps. The clock and the command id source are passed in."""
