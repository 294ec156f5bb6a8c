"""End-to-end benchmarks: ingest through the worker, freshness, similar products, search by photo.

Starts its own isolated stack (Milvus Lite server, ONE Celery worker with concurrency 1, gunicorn)
on free 127.0.0.1 ports with its own VAR_DIR (default var/bench, wiped unless --keep), measures,
prints a table and writes docs/benchmarks.md and docs/benchmarks_latency.png. Every process it
starts is stopped on exit, error or Ctrl-C. It only talks to 127.0.0.1.

    .venv/bin/python -m benchmarks            # full run (see --help for the defaults); make bench
    .venv/bin/python -m benchmarks --quick    # smoke run, about 3 minutes

How the large gallery is built: --ingest real Fashion-MNIST items go through the real pipeline
(load_demo_catalog -> Celery worker -> embed -> Milvus). The remaining products up to --catalog
are bulk-created (status ready, pointing at the ingested items' image files) and their vectors
are the real embeddings of the ingested items plus Gaussian noise, re-normalised, upserted
through the product's vector store with the row format of vector_row().

Modules: harness (run context, processes, CPU meter, statistics), stack (the product's processes),
loadgen (HTTP load generator), one module per benchmark (ingest, freshness, milvus_calls,
catalog_scale, similar, search), report and analysis (table, docs/benchmarks.md, PNG), __main__.
The benchmarks reach the product only through its commands, HTTP API and public services.
"""
