"""Entry points: `acceld` (HTTP API + Prefect deployments) and `accelctl` (CLI)."""
