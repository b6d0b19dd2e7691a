"""``vidpar serve``: a long-lived video service on a loaded model (OpenAI videos API, durable job queue, replicas).

- ``cli``: the subcommand (argument checks, start-up, exit codes);
- ``app`` / ``server``: the HTTP API (FastAPI) and its uvicorn thread on rank 0;
- ``protocol``: request parsing and validation (the pipeline's own checks), the OpenAI response shapes;
- ``worker`` / ``control``: the rank loop and the control channel (heartbeat, job broadcast, outcome agreement);
- ``jobs`` (+ ``sql_store``, ``sqlite_store``, ``postgres_store``): the durable job store;
- ``metrics``: ``/metrics`` in the Prometheus text format.

Nothing here is imported by the rest of vidpar except the CLI's subcommand registration.
"""
