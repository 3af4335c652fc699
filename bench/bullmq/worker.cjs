// A BullMQ worker serving the bench's job: no-op, or a sleep of `job.data.ms` milliseconds.
//
//   NODE_PATH=<env>/node_modules node bench/bullmq/worker.cjs --url URL --queue Q --prefix P \
//       [--concurrency N]
//
// Run by `bench/bullmq_bench.py` with the Node environment the harness creates (npm `bullmq`
// at a pinned version, ioredis). Every Worker option is BullMQ's default except `concurrency`
// (default 1). It prints `ready` once the worker is connected, and closes on SIGTERM.
'use strict';

const { Worker } = require('bullmq');
const { parseArgs } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    queue: { type: 'string' },
    prefix: { type: 'string', default: 'bull' },
    concurrency: { type: 'string', default: '1' },
  },
});

async function processor(job) {
  const ms = job.data && job.data.ms;
  if (ms) {
    await sleep(ms);
  }
  return null;
}

async function main() {
  const worker = new Worker(values.queue, processor, {
    connection: { url: values.url },
    prefix: values.prefix,
    concurrency: Number(values.concurrency),
  });
  worker.on('error', (err) => console.error(`worker error: ${err}`));
  await worker.waitUntilReady();
  let closing = false;
  process.on('SIGTERM', async () => {
    if (closing) return;
    closing = true;
    await worker.close();
    process.exit(0);
  });
  process.stdout.write('ready\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
