// The BullMQ side of the harness: enqueue jobs, time them, read the CPU they cost.
//
//   NODE_PATH=<env>/node_modules node bench/bullmq/client.cjs throughput --url URL --queue Q \
//       --prefix P --n N --batch B --warmup W --pids 123,456
//   ... latency --n N --warmup W
//   ... mixed --plan 20,1000,20,...   (milliseconds of each job, in submit order)
//   ... versions
//
// Prints one JSON document on its last line of stdout. Throughput adds jobs with `addBulk` in
// batches and ends when the queue's completed set holds every job (polled every 2 ms: a ZCARD);
// the CPU of this process, of the worker processes (`/proc/<pid>/stat`) and of Redis
// (`INFO cpu`) is read at the start and the end of the timed part. Latency awaits each job
// with `job.waitUntilFinished(queueEvents)`, BullMQ's own way of awaiting a result. Job
// options are BullMQ's defaults (completed jobs are kept, as our results are).
'use strict';

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');
const { Queue, QueueEvents } = require('bullmq');
const IORedis = require('ioredis');

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string', default: 'redis://127.0.0.1:6379/0' },
    queue: { type: 'string', default: 'bench' },
    prefix: { type: 'string', default: 'bull' },
    n: { type: 'string', default: '1000' },
    batch: { type: 'string', default: '500' },
    warmup: { type: 'string', default: '0' },
    pids: { type: 'string', default: '' },
    plan: { type: 'string', default: '' },
    timeout: { type: 'string', default: '600' },
  },
});

const CLOCK_TICKS = 100; // USER_HZ on Linux

function procCpu(pid) {
  try {
    const raw = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}

function selfCpu() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function redisCpu(redis) {
  const info = await redis.info('cpu');
  let total = 0;
  for (const line of info.split('\n')) {
    const [key, value] = line.trim().split(':');
    if (key === 'used_cpu_user' || key === 'used_cpu_sys') total += Number(value);
  }
  return total;
}

async function cpuReading(redis, pids) {
  return {
    client: selfCpu(),
    workers: pids.reduce((sum, pid) => sum + procCpu(pid), 0),
    redis: await redisCpu(redis),
  };
}

function queue() {
  return new Queue(values.queue, { connection: { url: values.url }, prefix: values.prefix });
}

async function addJobs(q, datas, batch) {
  for (let start = 0; start < datas.length; start += batch) {
    await q.addBulk(datas.slice(start, start + batch).map((data) => ({ name: 'noop', data })));
  }
}

async function waitCompleted(q, count, timeoutS) {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const done = await q.getCompletedCount();
    if (done >= count) return done;
    const failed = await q.getFailedCount();
    if (failed) throw new Error(`${failed} job(s) failed`);
    if (Date.now() > deadline) throw new Error(`${done} of ${count} jobs completed in ${timeoutS}s`);
    await sleep(2);
  }
}

async function throughput() {
  const n = Number(values.n);
  const warmup = Number(values.warmup);
  const batch = Number(values.batch);
  const pids = values.pids ? values.pids.split(',').map(Number) : [];
  const q = queue();
  const redis = new IORedis(values.url);
  try {
    await q.waitUntilReady();
    await addJobs(q, Array.from({ length: warmup }, () => ({})), batch);
    await waitCompleted(q, warmup, Number(values.timeout));
    const before = await cpuReading(redis, pids);
    const began = process.hrtime.bigint();
    await addJobs(q, Array.from({ length: n }, () => ({})), batch);
    const done = await waitCompleted(q, warmup + n, Number(values.timeout));
    const seconds = Number(process.hrtime.bigint() - began) / 1e9;
    const after = await cpuReading(redis, pids);
    return {
      tasks: n,
      seconds,
      completed: done - warmup,
      client_cpu: after.client - before.client,
      worker_cpu: after.workers - before.workers,
      redis_cpu: after.redis - before.redis,
    };
  } finally {
    await q.close();
    redis.disconnect();
  }
}

async function latency() {
  const n = Number(values.n);
  const warmup = Number(values.warmup);
  const q = queue();
  const events = new QueueEvents(values.queue, {
    connection: { url: values.url },
    prefix: values.prefix,
  });
  const samples = [];
  try {
    await Promise.all([q.waitUntilReady(), events.waitUntilReady()]);
    for (let i = 0; i < warmup + n; i++) {
      const began = process.hrtime.bigint();
      const job = await q.add('noop', {});
      await job.waitUntilFinished(events, 60_000);
      if (i >= warmup) samples.push(Number(process.hrtime.bigint() - began) / 1e9);
    }
  } finally {
    await events.close();
    await q.close();
  }
  return { samples };
}

async function mixed() {
  const plan = values.plan.split(',').map(Number);
  const q = queue();
  try {
    await q.waitUntilReady();
    const began = process.hrtime.bigint();
    await addJobs(
      q,
      plan.map((ms) => ({ ms })),
      plan.length,
    );
    const done = await waitCompleted(q, plan.length, Number(values.timeout));
    const seconds = Number(process.hrtime.bigint() - began) / 1e9;
    return { tasks: plan.length, completed: done, seconds };
  } finally {
    await q.close();
  }
}

function versions() {
  const bullmq = require('bullmq/package.json').version;
  const ioredis = require('ioredis/package.json').version;
  return { bullmq, ioredis, node: process.versions.node };
}

async function main() {
  const what = positionals[0];
  let out;
  if (what === 'versions') out = versions();
  else if (what === 'throughput') out = await throughput();
  else if (what === 'latency') out = await latency();
  else if (what === 'mixed') out = await mixed();
  else throw new Error(`unknown command ${what}: throughput, latency, mixed or versions`);
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err && err.stack ? err.stack : String(err));
    process.exit(1);
  },
);
