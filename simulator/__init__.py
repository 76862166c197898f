"""The simulated device fleet: protocol v1 over the real broker, with a ground truth to score.

Pure parts (no I/O, time is an argument): `behaviour` (what devices measure), `scenario`
(which households leak or fail, when), `valve` (how a meter obeys commands), `chaos` (what
misbehaving devices send), `truth` (what happened and the score), `wire` (MQTT packets).
I/O adapters: `link` (one MQTT connection), `transport` (per-device or bridged), `runner`
(a scenario run), `load` (load mode over several processes), `storage` (counting what was
stored), `display`, `demo` and `cli` (`gas-safety simulate demo|run|load`).
"""
