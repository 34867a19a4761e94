/**
 * `--device auto|cpu|cuda[:N]` -> onnxruntime-node sessions.
 *
 * onnxruntime-node does not fall back by itself: with `executionProviders: ['cuda']` (or `['cuda', 'cpu']`) and no
 * CUDA provider library, InferenceSession.create rejects with "...Failed to load shared library". So `auto` tries
 * CUDA and falls back to CPU with a note; an explicit `cuda` that fails is an error with the install hint.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import * as ort from 'onnxruntime-node';
import { OnestepError } from '../errors.js';
import { beginCacheEntry, dropCachedGraph, findCachedGraph, graphCacheKey } from './graph-cache.js';

export type DeviceRequest = { kind: 'auto' } | { kind: 'cpu' } | { kind: 'cuda'; id: number };
/** A device sessions actually run on. */
export type Device = { kind: 'cpu' } | { kind: 'cuda'; id: number };

export const CUDA_INSTALL_HINT =
  'CUDA needs the GPU build of onnxruntime-node: reinstall with `ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci` ' +
  '(Linux x64, CUDA 12 and cuDNN 9 installed), or use --device cpu';

export function parseDevice(spec: string): DeviceRequest {
  const s = spec.trim().toLowerCase();
  if (s === 'auto') return { kind: 'auto' };
  if (s === 'cpu') return { kind: 'cpu' };
  const m = /^cuda(?::(\d+))?$/.exec(s);
  if (m) return { kind: 'cuda', id: m[1] === undefined ? 0 : Number(m[1]) };
  throw new OnestepError(`unknown device ${JSON.stringify(spec)}`, 'Use auto, cpu, cuda or cuda:N (N = GPU index).');
}

export function deviceName(d: Device | DeviceRequest): string {
  return d.kind === 'cuda' ? `cuda:${d.id}` : d.kind;
}

/** Intra-op threads per session when the user gives none: the machine's cores shared among the workers. */
export function defaultThreads(workers: number): number {
  return Math.max(1, Math.floor(os.availableParallelism() / Math.max(1, workers)));
}

export interface SessionSettings {
  threads: number;
  /**
   * ORT's `session.disable_prepacking`. Prepacking copies every GEMM weight into MLAS's packed layout at load time:
   * slower loads and about twice the weight memory, in exchange for packed GEMMs (see bench figures in the report).
   */
  disablePrepacking?: boolean;
  /**
   * ORT's optimized-graph cache beside the graph (graph-cache.ts): on unless false or ONESTEP_GRAPH_CACHE=0.
   * Costs disk (about the graph's weights again, in ORT's layouts) and saves most of a big graph's load time.
   */
  graphCache?: boolean;
  /**
   * ORT's graph optimization level (default 'all': the CPU's NCHWc conv layout, which keeps a reordered copy of every
   * conv weight in memory). 'basic' leaves the weights where ORT maps them from disk: for one-off runs.
   */
  optimization?: 'all' | 'basic';
}

/** How a session was created: from the cache, writing the cache, or without it. */
export type CacheUse = 'hit' | 'written' | 'off';

export function sessionOptions(device: Device, settings: SessionSettings): ort.InferenceSession.SessionOptions {
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders: device.kind === 'cuda' ? [{ name: 'cuda', deviceId: device.id }] : ['cpu'],
    graphOptimizationLevel: settings.optimization ?? 'all',
    executionMode: 'sequential',
    intraOpNumThreads: settings.threads,
    interOpNumThreads: 1,
    // ORT's memory pattern: from the second run on, a session allocates all its activations as one planned block, a
    // new arena region beside the first run's (which the arena keeps). For SD 1.5's VAE decoder at 512x512 that is
    // 0.9 GiB more resident for good, for no measured CPU time (bench/README.md, Memory). On CPU it stays off.
    ...(device.kind === 'cpu' ? { enableMemPattern: false } : {}),
    // Warnings such as "some nodes were not assigned to the preferred execution provider" are expected with CUDA.
    logSeverityLevel: 3,
  };
  if (settings.disablePrepacking) options.extra = { session: { disable_prepacking: '1' } };
  return options;
}

/**
 * Whether this machine has an NVIDIA GPU (its driver is loaded): Linux's /proc/driver/nvidia or /dev/nvidia0.
 * Elsewhere (Windows) there is no cheap test, so a GPU is assumed possible and CUDA is tried.
 */
export function nvidiaGpuPresent(): boolean {
  if (process.platform !== 'linux') return true;
  return existsSync('/proc/driver/nvidia/version') || existsSync('/dev/nvidia0') || existsSync('/dev/nvidiactl');
}

function looksLikeMissingCuda(message: string): boolean {
  return /shared library|cuda|cudnn|cublas|provider/i.test(message);
}

function firstLine(message: string): string {
  return message.split('\n')[0].trim();
}

/**
 * Opens a session on the requested device. With `auto`, a CUDA failure falls back to CPU and `note` says so
 * (one line for the user). Errors that are not about the device (a corrupt graph) are reported as they are.
 * `loadMs` is the session's creation time; `cache` says whether the optimized-graph cache was used.
 */
export async function openSession(
  file: string,
  request: DeviceRequest | Device,
  settings: SessionSettings,
): Promise<{ session: ort.InferenceSession; device: Device; note?: string; loadMs: number; cache: CacheUse }> {
  const started = performance.now();
  const done = (r: { session: ort.InferenceSession; cache: CacheUse }, device: Device, note?: string) => ({ ...r, device, note, loadMs: performance.now() - started });
  if (request.kind === 'cpu') return done(await createOrExplain(file, { kind: 'cpu' }, settings), { kind: 'cpu' });
  // auto on a machine without an NVIDIA GPU: CPU, and nothing to say about CUDA (no GPU is the normal case there).
  if (request.kind === 'auto' && !nvidiaGpuPresent()) return done(await createOrExplain(file, { kind: 'cpu' }, settings), { kind: 'cpu' });
  const cuda: Device = { kind: 'cuda', id: request.kind === 'cuda' ? request.id : 0 };
  // Without the CUDA provider ORT also logs a red error of its own; the user gets our note or error instead.
  // (ORT fixes this level process-wide at the first session the process creates; later settings do nothing.)
  ort.env.logLevel = 'fatal';
  try {
    return done(await create(file, cuda, settings), cuda);
  } catch (e) {
    const message = (e as Error).message ?? String(e);
    if (!looksLikeMissingCuda(message)) throw modelError(file, message);
    if (request.kind === 'cuda') {
      throw new OnestepError(`CUDA device ${cuda.id} is not usable: ${firstLine(message)}`, CUDA_INSTALL_HINT);
    }
    const cpu = await createOrExplain(file, { kind: 'cpu' }, settings);
    return done(cpu, { kind: 'cpu' }, `CUDA is not available (${firstLine(message)}); running on CPU`);
  }
}

function cacheEnabled(settings: SessionSettings): boolean {
  // The cache holds graphs optimized at level 'all' only.
  return settings.graphCache !== false && (settings.optimization ?? 'all') === 'all' && process.env.ONESTEP_GRAPH_CACHE !== '0';
}

/**
 * A session from the cached optimized graph when there is one (loaded with optimizations off: it is the optimized
 * graph); else from the graph itself, saving its optimized form for next time. Throws ORT's own errors.
 */
async function create(file: string, device: Device, settings: SessionSettings): Promise<{ session: ort.InferenceSession; cache: CacheUse }> {
  const options = sessionOptions(device, settings);
  if (!cacheEnabled(settings)) return { session: await ort.InferenceSession.create(file, options), cache: 'off' };
  const key = await graphCacheKey(file, device);
  const cached = await findCachedGraph(file, key);
  if (cached) {
    try {
      return { session: await ort.InferenceSession.create(cached, { ...options, graphOptimizationLevel: 'disabled' }), cache: 'hit' };
    } catch {
      await dropCachedGraph(cached); // unreadable (a disk error, a truncated file): rebuilt below
    }
  }
  const entry = await beginCacheEntry(file, key);
  if (!entry) return { session: await ort.InferenceSession.create(file, options), cache: 'off' };
  let session: ort.InferenceSession;
  try {
    const extra = { ...(options.extra ?? {}), session: { ...((options.extra?.session as Record<string, string>) ?? {}), ...entry.config } };
    session = await ort.InferenceSession.create(file, { ...options, optimizedModelFilePath: entry.modelPath, extra });
  } catch (e) {
    await entry.abort();
    // A failure to write the cache (a full disk) must not fail the load: try once more without it.
    if (looksLikeMissingCuda((e as Error).message ?? '')) throw e;
    return { session: await ort.InferenceSession.create(file, options), cache: 'off' };
  }
  await entry.commit();
  return { session, cache: 'written' };
}

async function createOrExplain(file: string, device: Device, settings: SessionSettings): Promise<{ session: ort.InferenceSession; cache: CacheUse }> {
  try {
    return await create(file, device, settings);
  } catch (e) {
    throw modelError(file, (e as Error).message ?? String(e));
  }
}

function modelError(file: string, message: string): OnestepError {
  return new OnestepError(`${file}: onnxruntime cannot load this graph: ${firstLine(message)}`, 'Convert the checkpoint again with this version of onestep.');
}
