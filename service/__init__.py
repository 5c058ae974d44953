"""The accel service around the engine: `acceld` (HTTP API, webhook parsing, metrics, runner supervisor),
`accelctl` (CLI) and the embedded state dir. Nothing in `accel/` imports from here."""
