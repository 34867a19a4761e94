/**
 * The inference engine of `onestep generate`: a model directory and batches of requests in, RGB bytes out, computed
 * in worker threads (engine-worker.ts) on CPU or CUDA. Several generate() calls may be in flight: each worker takes
 * one batch at a time, further batches wait for the next free worker.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { BadInputError, OnestepError } from '../errors.js';
import { defaultThreads, deviceName, parseDevice, type Device } from './device.js';
import type { FromWorker, GeneratedImage, ImageRequest, SessionLoad, ToWorker, WorkerConfig, WorkerFailure } from './engine-worker.js';
import { readModelManifest, type ModelManifest, type OneStepRecipe } from './model-dir.js';
import { alphaBar } from './schedule.js';

export type { GeneratedImage, ImageRequest, SessionLoad, StageTimes } from './engine-worker.js';

export interface EngineOptions {
  /** auto | cpu | cuda | cuda:N */
  device: string;
  /** Worker threads, each with its own sessions (default 1). */
  workers?: number;
  /** Intra-op threads per session (default: cores / workers). */
  threads?: number;
  /** Overrides of the model's recipe. */
  recipe?: Partial<Pick<OneStepRecipe, 'prediction_type' | 'timestep' | 'guidance'>>;
  /** YOSO's informative prior: a mean latent [C, h, w] or per-channel means [C]. */
  initLatentMean?: Float32Array;
  /** Noise generator: PyTorch's CPU randn (the only one). */
  rng?: 'torch';
  /** ORT `session.disable_prepacking` (faster loads of big graphs; see device.ts). */
  disablePrepacking?: boolean;
}

interface Job {
  id: number;
  batch: ImageRequest[];
  resolve: (images: GeneratedImage[]) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  job?: Job;
  dead?: Error;
}

/** The worker script: the compiled .js beside this file, or under tsx the .ts through a bootstrap that registers tsx. */
function spawnWorker(cfg: WorkerConfig): Worker {
  const workerData = { onestepEngine: cfg };
  const underTsx = import.meta.url.endsWith('.ts');
  const script = new URL(underTsx ? './engine-worker.ts' : './engine-worker.js', import.meta.url);
  if (!underTsx) return new Worker(script, { workerData });
  // Under tsx this module may itself run as CommonJS (mocha), where import.meta.resolve does not exist.
  const tsxApi =
    typeof import.meta.resolve === 'function'
      ? import.meta.resolve('tsx/esm/api')
      : pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm/api')).href;
  const bootstrap =
    `import(${JSON.stringify(tsxApi)})` +
    `.then((api) => { (api.register ?? api.default.register)(); return import(${JSON.stringify(script.href)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}

function fromFailure(f: WorkerFailure): Error {
  return f.onestep ? new OnestepError(f.message, f.hint) : new OnestepError(`inference failed: ${f.message}`);
}

/** Resolves with the worker's `ready` message; rejects on a load failure or a crash. */
function whenReady(worker: Worker): Promise<{ device: Device; notes: string[]; loads: SessionLoad[] }> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    };
    const onMessage = (msg: FromWorker) => {
      cleanup();
      if (msg.type === 'ready') resolve({ device: msg.device, notes: msg.notes, loads: msg.loads });
      else if (msg.type === 'failed') reject(fromFailure(msg.error));
      else reject(new OnestepError(`inference worker sent ${msg.type} before it was ready`));
    };
    const onError = (e: Error) => {
      cleanup();
      reject(new OnestepError(`inference worker failed while loading: ${e.message}`));
    };
    const onExit = (code: number) => {
      cleanup();
      reject(new OnestepError(`inference worker exited while loading (code ${code})`));
    };
    worker.on('message', onMessage);
    worker.once('error', onError);
    worker.once('exit', onExit);
  });
}

export class OneStepEngine {
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closing = false;

  private constructor(
    readonly manifest: ModelManifest,
    /** What actually runs: 'cpu' or 'cuda:N'. */
    readonly device: string,
    readonly notes: string[],
    /** The recipe in effect (the model's, with the options' overrides). */
    readonly recipe: OneStepRecipe,
    workers: Worker[],
    /** Load times of the first worker's tokenizer and sessions. */
    readonly loads: SessionLoad[],
  ) {
    for (const worker of workers) this.attach(worker);
  }

  static async load(modelDir: string, opts: EngineOptions): Promise<OneStepEngine> {
    const manifest = await readModelManifest(modelDir);
    let request = parseDevice(opts.device);
    if (manifest.target === 'cuda') {
      if (request.kind === 'cpu') {
        throw new OnestepError(
          `${modelDir} was converted for CUDA (its graphs use CUDA-only fused ops) and cannot run on the CPU`,
          'Run it with --device cuda on a machine with the CUDA provider, or convert the checkpoint again without --target cuda.',
        );
      }
      // No CPU fallback for a CUDA-only model: a missing CUDA provider is the error to report.
      if (request.kind === 'auto') request = { kind: 'cuda', id: 0 };
    }
    const workers = opts.workers ?? 1;
    if (!Number.isInteger(workers) || workers < 1) throw new OnestepError(`workers must be a positive integer (got ${workers})`);
    const threads = opts.threads ?? defaultThreads(workers);
    if (!Number.isInteger(threads) || threads < 1) throw new OnestepError(`threads must be a positive integer (got ${threads})`);
    if (opts.rng !== undefined && opts.rng !== 'torch') throw new OnestepError(`unknown rng ${JSON.stringify(opts.rng)}`, 'The only generator is torch.');
    const recipe: OneStepRecipe = { ...manifest.recipe, ...opts.recipe };
    if (opts.recipe && Object.keys(opts.recipe).length > 0) recipe.source = 'flag';
    // Flow models integrate a velocity and never look at alpha bar (their timestep, 1000, lies outside the table).
    const abar = recipe.prediction_type === 'flow' ? Number.NaN : alphaBar(manifest.configs.scheduler, recipe.timestep);
    if (opts.initLatentMean && recipe.prediction_type === 'flow') {
      throw new OnestepError('an initial latent mean (informative prior) does not apply to flow models');
    }
    const config = (device: WorkerConfig['device']): WorkerConfig => ({
      modelDir,
      manifest,
      device,
      threads,
      disablePrepacking: !!opts.disablePrepacking,
      recipe: { prediction_type: recipe.prediction_type, timestep: recipe.timestep },
      alphaBar: abar,
      initLatentMean: opts.initLatentMean,
    });

    // The first worker settles the device (auto -> CUDA or CPU); the others are told what it found.
    const started: Worker[] = [];
    try {
      started.push(spawnWorker(config(request)));
      const first = await whenReady(started[0]);
      for (let i = 1; i < workers; i++) started.push(spawnWorker(config(first.device)));
      await Promise.all(started.slice(1).map(whenReady));
      return new OneStepEngine(manifest, deviceName(first.device), first.notes, recipe, started, first.loads);
    } catch (e) {
      await Promise.all(started.map((w) => w.terminate()));
      throw e;
    }
  }

  /** How many batches can run at once (one per worker). */
  get workerCount(): number {
    return this.slots.filter((s) => !s.dead).length;
  }

  /** All requests share width/height. Resolves when the batch is done. */
  generate(batch: ImageRequest[]): Promise<GeneratedImage[]> {
    try {
      this.validate(batch);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ id: this.nextId++, batch, resolve, reject });
      this.pump();
    });
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const job of this.queue.splice(0)) job.reject(new OnestepError('the engine was closed before this batch ran'));
    await Promise.all(
      this.slots.map(async (slot) => {
        if (slot.dead) return;
        const exited = new Promise<void>((resolve) => slot.worker.once('exit', () => resolve()));
        slot.worker.ref();
        slot.worker.postMessage({ type: 'close' } satisfies ToWorker);
        const timer = setTimeout(() => void slot.worker.terminate(), 10_000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }

  private validate(batch: ImageRequest[]): void {
    if (this.closing) throw new OnestepError('the engine is closed');
    if (this.slots.every((s) => s.dead)) throw this.slots[0].dead!;
    if (batch.length === 0) throw new OnestepError('generate() needs at least one request');
    const { width, height } = batch[0];
    const f = this.manifest.latent.downscale;
    for (const r of batch) {
      const where = `request ${r.index}`;
      if (r.width !== width || r.height !== height) {
        throw new OnestepError(`${where}: ${r.width}x${r.height} differs from the batch's ${width}x${height}`, 'Batch requests of one size together.');
      }
      if (!Number.isInteger(r.width) || !Number.isInteger(r.height) || r.width <= 0 || r.height <= 0 || r.width % f || r.height % f) {
        throw new BadInputError(where, `size ${r.width}x${r.height} must be positive multiples of ${f}`);
      }
      if (!Number.isFinite(r.guidance)) throw new BadInputError(where, `guidance ${r.guidance} is not a number`);
      if (typeof r.seed !== 'bigint') throw new BadInputError(where, `seed must be a bigint (got ${typeof r.seed})`);
    }
  }

  private attach(worker: Worker): void {
    const slot: Slot = { worker };
    this.slots.push(slot);
    worker.unref();
    worker.on('message', (msg: FromWorker) => {
      const job = slot.job;
      if (msg.type === 'ready' || !job || msg.id !== job.id) return;
      slot.job = undefined;
      worker.unref();
      if (msg.type === 'done') job.resolve(msg.images);
      else job.reject(fromFailure(msg.error));
      this.pump();
    });
    const die = (e: Error) => {
      if (slot.dead) return;
      slot.dead = e;
      slot.job?.reject(e);
      slot.job = undefined;
      if (this.slots.every((s) => s.dead)) for (const job of this.queue.splice(0)) job.reject(e);
      else this.pump();
    };
    worker.on('error', (e) => die(new OnestepError(`inference worker crashed: ${e.message}`)));
    worker.on('exit', (code) => {
      if (!this.closing) die(new OnestepError(`inference worker exited unexpectedly (code ${code})`));
      else slot.dead ??= new OnestepError('closed');
    });
  }

  private pump(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (slot.dead || slot.job) continue;
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.ref();
      slot.worker.postMessage({ type: 'generate', id: job.id, batch: job.batch } satisfies ToWorker);
    }
  }
}
