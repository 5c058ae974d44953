"""The Prefect deployment definitions: the one source for acceld's serve list and for prefect.yaml."""
