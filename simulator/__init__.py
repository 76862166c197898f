"""The simulated device fleet: protocol v1 over the real broker, with a ground truth to score.

Pure parts (no I/O, time is an argument): `behaviour` (what devices measure), `scenario`
(which households leak or fail, when), `valve` (how a meter obeys commands), `chaos` (what
misbehaving devices send), `truth` (what happened and the score), `wire` (MQTT packets).
I/O adapters: `link` (one MQTT connection), `transport` (per-device or bridged), `runner`
(a scenario run), `load` (load mode over several processes: `publisher` runs in each,
`load_report` gathers what they report), `storage` (counting what was stored), `display`,
`demo`, `cli` (the scenario steps the commands share) and `commands` (`gas-safety simulate
demo|run|load`).
"""
