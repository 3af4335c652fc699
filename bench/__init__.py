"""The benchmark harness: raw Redis ceiling, arq, BullMQ and Mahavishnu pools, side by side.

    python -m bench                  # the full run (a few minutes on 2 cores)
    python -m bench --quick          # every scenario at 5% of its size
    python -m bench --help           # scenarios, systems, scale, output paths

Every figure of a run is measured on the same Redis (a private `redis-server` on a free loopback
port unless `--redis-url` is given), reported as an absolute and as a ratio to the raw ceiling,
and written to the terminal, `bench/results/latest.json` and `docs/benchmarks.md`.

Modules: `config` (what a run measures), `stats` (timing, processes, Redis, each scenario's
figure), `raw` and `raw_consumer` (the ceiling), `peer` (what arq and BullMQ share: their worker
processes, client runs and environment step), `arq_bench` and `arq_section` with `arq_client` /
`arq_worker` (the arq baseline, run in a virtual environment of its own), `bullmq_bench` and
`bullmq_section` with `bullmq/worker.cjs` / `bullmq/client.cjs` (BullMQ, in a Node environment
the harness makes with npm), `ours` (the pools), `mixed` (the mixed-duration workload and a
new pool's first result), `targets` / `targets15` (issue 5's and issue 15's targets judged),
`report` (terminal tables, JSON), `page` (the Markdown page), `method` (machine, versions, how
each figure is measured) and `runner` (the order of a run).
"""
