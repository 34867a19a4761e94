#!/usr/bin/env node
import os from 'node:os';

// sharp's image encoders and the fs writes share libuv's thread pool, 4 threads by default: one per core (at least 4)
// keeps image writing off the inference path's critical rate on big machines (bench/README.md, "Image writer").
process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, os.availableParallelism()));
const { execute } = await import('@oclif/core');

await execute({ dir: import.meta.url });
