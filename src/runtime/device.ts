/**
 * `--device auto|cpu|cuda[:N]` -> onnxruntime-node sessions.
 *
 * onnxruntime-node does not fall back by itself: with `executionProviders: ['cuda']` (or `['cuda', 'cpu']`) and no
 * CUDA provider library, InferenceSession.create rejects with "...Failed to load shared library". So `auto` tries
 * CUDA and falls back to CPU with a note; an explicit `cuda` that fails is an error with the install hint.
 */
import os from 'node:os';
import * as ort from 'onnxruntime-node';
import { OnestepError } from '../errors.js';

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
}

export function sessionOptions(device: Device, settings: SessionSettings): ort.InferenceSession.SessionOptions {
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders: device.kind === 'cuda' ? [{ name: 'cuda', deviceId: device.id }] : ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: settings.threads,
    interOpNumThreads: 1,
    // Warnings such as "some nodes were not assigned to the preferred execution provider" are expected with CUDA.
    logSeverityLevel: 3,
  };
  if (settings.disablePrepacking) options.extra = { session: { disable_prepacking: '1' } };
  return options;
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
 */
export async function openSession(
  file: string,
  request: DeviceRequest | Device,
  settings: SessionSettings,
): Promise<{ session: ort.InferenceSession; device: Device; note?: string }> {
  if (request.kind === 'cpu') return { session: await createOrExplain(file, { kind: 'cpu' }, settings), device: { kind: 'cpu' } };
  const cuda: Device = { kind: 'cuda', id: request.kind === 'cuda' ? request.id : 0 };
  // Without the CUDA provider ORT also logs a red error of its own; the user gets our note or error instead.
  // (ORT fixes this level process-wide at the first session the process creates; later settings do nothing.)
  ort.env.logLevel = 'fatal';
  try {
    return { session: await ort.InferenceSession.create(file, sessionOptions(cuda, settings)), device: cuda };
  } catch (e) {
    const message = (e as Error).message ?? String(e);
    if (!looksLikeMissingCuda(message)) throw modelError(file, message);
    if (request.kind === 'cuda') {
      throw new OnestepError(`CUDA device ${cuda.id} is not usable: ${firstLine(message)}`, CUDA_INSTALL_HINT);
    }
    const session = await createOrExplain(file, { kind: 'cpu' }, settings);
    return { session, device: { kind: 'cpu' }, note: `CUDA is not available (${firstLine(message)}); running on CPU` };
  }
}

async function createOrExplain(file: string, device: Device, settings: SessionSettings): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(file, sessionOptions(device, settings));
  } catch (e) {
    throw modelError(file, (e as Error).message ?? String(e));
  }
}

function modelError(file: string, message: string): OnestepError {
  return new OnestepError(`${file}: onnxruntime cannot load this graph: ${firstLine(message)}`, 'Convert the checkpoint again with this version of onestep.');
}
