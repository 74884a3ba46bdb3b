"""The team stack (`tinyops stack`): PostgreSQL, an S3 object store (OpenStack Swift), an MLflow
tracking server and a Prefect server, started on this machine as real processes for a team's
shared box and for the tests. Only `core` is below it; nothing in the pipeline imports it."""
