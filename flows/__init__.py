"""Prefect flows: the conversion DAG and its compositions."""
