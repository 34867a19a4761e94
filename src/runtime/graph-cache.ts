/**
 * ORT's optimized-graph cache. Creating a session on a big graph spends most of its time rewriting it (CPU: convs
 * into the NCHWc layout, their weights reordered, constants folded): 17-33 s for SD 1.5's fp32 UNet. ORT can save the
 * result (`optimizedModelFilePath`, initializers in an external file); a later session loads that file with
 * optimizations off, memory-mapping its weights, and only prepacks GEMM weights: 1.6-4 s (figures in bench/README.md).
 * Its outputs are byte-identical to a session on the original graph.
 *
 * An entry lives beside the graph, `<model dir>/.onestep-cache/<name>-<key>/`, and is keyed by everything the saved
 * graph depends on: ORT's version, the device, the CPU's model and feature flags, the graph's bytes and
 * the identity (size, mtime, inode) of its external data (prepacking is applied at load, so it is not in the key). An entry is used only once complete (`entry.json` is
 * written last, after an atomic rename of its folder); one whose key no longer matches is never read, and is removed
 * when a new entry for the same graph is written. Any failure to write the cache only costs the cache.
 */
import { createHash } from 'node:crypto';
import { readFile, readdir, rename, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Device } from './device.js';
import { cpuInfo } from './machine.js';
import { removeStaleTemps, tempPathFor } from '../io/atomic.js';

export const CACHE_DIR = '.onestep-cache';
const ENTRY = 'entry.json';
const MODEL = 'model.onnx';
const DATA = 'model.onnx.data';

/** The key of `file`'s cache entry for this device and machine. */
export async function graphCacheKey(file: string, device: Device): Promise<string> {
  const h = createHash('sha256');
  h.update(`onnxruntime ${ort.env.versions.common}\n`);
  h.update(`device ${device.kind === 'cuda' ? `cuda:${device.id}` : 'cpu'}\n`);
  const cpu = cpuInfo();
  h.update(`cpu ${cpu.model}\n${cpu.flags.join(' ')}\n`);
  h.update(await readFile(file));
  // The .onnx holds only offsets into its data file: a rewritten data file with new weights keeps the same graph bytes.
  for (const data of await externalDataFiles(file)) {
    const s = await stat(data, { bigint: true });
    h.update(`\n${path.basename(data)} ${s.size} ${s.mtimeNs} ${s.ino}`);
  }
  return h.digest('hex').slice(0, 20);
}

/** The data files beside `file` that it may reference (onestep writes `<name>.onnx.data`). */
async function externalDataFiles(file: string): Promise<string[]> {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((n) => n !== base && n.startsWith(base) && !n.startsWith('.')).sort().map((n) => path.join(dir, n));
}

function entryName(file: string, key: string): string {
  return `${path.basename(file, '.onnx')}-${key}`;
}

/** The cached graph for `key`, if a complete entry exists. */
export async function findCachedGraph(file: string, key: string): Promise<string | undefined> {
  const dir = path.join(path.dirname(file), CACHE_DIR, entryName(file, key));
  try {
    const entry = JSON.parse(await readFile(path.join(dir, ENTRY), 'utf8'));
    if (entry.key !== key) return undefined;
    await stat(path.join(dir, DATA));
    return path.join(dir, MODEL);
  } catch {
    return undefined;
  }
}

/** Removes the entry a cached graph lives in (it failed to load). */
export async function dropCachedGraph(cachedModel: string): Promise<void> {
  await rm(path.dirname(cachedModel), { recursive: true, force: true });
}

export interface PendingEntry {
  /** Where ORT writes the optimized graph (the session option `optimizedModelFilePath`). */
  modelPath: string;
  /** Session config entries that make ORT write initializers and prepacked weights to the external file. */
  config: Record<string, string>;
  /** Publishes the entry (after the session that wrote it was created) and removes stale entries of the graph. */
  commit(): Promise<void>;
  abort(): Promise<void>;
}

/** A temp folder for a new entry, or undefined when the model directory is not writable. */
export async function beginCacheEntry(file: string, key: string): Promise<PendingEntry | undefined> {
  const root = path.join(path.dirname(file), CACHE_DIR);
  const name = entryName(file, key);
  const tmp = tempPathFor(path.join(root, name), 'building');
  try {
    await mkdir(tmp, { recursive: true });
  } catch {
    return undefined;
  }
  // Temp folders of processes that died while writing an entry (each can hold gigabytes).
  await removeStaleTemps(root);
  const config: Record<string, string> = {
    optimized_model_external_initializers_file_name: DATA,
    optimized_model_external_initializers_min_size_in_bytes: '1024',
  };
  // Not `save_external_prepacked_constant_initializers`: with it, ORT 1.30 writes a CLIP text encoder that segfaults
  // on its first run (a 1-layer CLIP graph is enough; a single Linear is not). Prepacking at load costs 1-2 s.
  const abort = () => rm(tmp, { recursive: true, force: true });
  return {
    modelPath: path.join(tmp, MODEL),
    config,
    abort,
    async commit() {
      try {
        await stat(path.join(tmp, DATA));
        await writeFile(path.join(tmp, ENTRY), JSON.stringify({ key, graph: path.basename(file), onnxruntime: ort.env.versions.common, cpu: cpuInfo().model }) + '\n');
        await rename(tmp, path.join(root, name)).catch(async () => abort()); // another process published it first
        const base = path.basename(file, '.onnx');
        const stale = (await readdir(root)).filter((n) => n !== name && /-[0-9a-f]{20}$/.test(n) && n.slice(0, -21) === base);
        await Promise.all(stale.map((n) => rm(path.join(root, n), { recursive: true, force: true })));
      } catch {
        await abort();
      }
    },
  };
}
