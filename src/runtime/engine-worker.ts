/**
 * The body of an inference worker thread (session.run blocks its thread, so inference never runs on the main one).
 * Each worker loads the tokenizer and the three sessions once, then turns batches of requests into RGB bytes:
 *
 *   tokenize -> text encoder [negatives of guided requests..., prompts...] -> noise per image from its own seed
 *   -> UNet at the recipe timestep -> guidance -> x0 -> VAE decoder (x0 / scaling_factor + shift_factor) -> uint8 HWC
 */
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { OnestepError } from '../errors.js';
import { openSession, type Device, type DeviceRequest } from './device.js';
import type { ModelManifest, OneStepRecipe } from './model-dir.js';
import { torchRandn } from './noise.js';
import { applyGuidance, informativePrior, usesGuidance, x0FromModelOutput } from './one-step.js';
import { ClipTokenizer } from './tokenizer.js';

export interface ImageRequest {
  index: number;
  prompt: string;
  negativePrompt: string;
  seed: bigint;
  width: number;
  height: number;
  guidance: number;
  /** Exact initial noise [C, h/8, w/8]; replaces the seeded noise. */
  latents?: Float32Array;
}

export interface StageTimes {
  tokenize: number;
  textEncoder: number;
  denoiser: number;
  decoder: number;
  total: number;
}

export interface GeneratedImage {
  index: number;
  width: number;
  height: number;
  /** HWC RGB */
  rgb: Uint8Array;
  warnings: string[];
  /** Milliseconds of the batch this image was made in (shared by every image of the batch). */
  ms: StageTimes;
}

export interface WorkerConfig {
  modelDir: string;
  manifest: ModelManifest;
  device: DeviceRequest | Device;
  threads: number;
  disablePrepacking: boolean;
  recipe: Pick<OneStepRecipe, 'prediction_type' | 'timestep'>;
  /** alphas_cumprod at the recipe timestep (unused by flow models). */
  alphaBar: number;
  initLatentMean?: Float32Array;
}

export type ToWorker = { type: 'generate'; id: number; batch: ImageRequest[] } | { type: 'close' };
export interface WorkerFailure {
  message: string;
  hint?: string;
  onestep: boolean;
}
export type FromWorker =
  | { type: 'ready'; device: Device; notes: string[] }
  | { type: 'done'; id: number; images: GeneratedImage[] }
  | { type: 'failed'; id?: number; error: WorkerFailure };

/**
 * Decoded sample NCHW in [-1, 1] -> uint8 HWC per image, as diffusers' VaeImageProcessor + numpy in float32:
 * clamp(x / 2 + 0.5, 0, 1), then (x * 255).round() with round half to even, then astype(uint8).
 */
export function sampleToRgb(sample: Float32Array, batch: number, channels: number, height: number, width: number): Uint8Array[] {
  const f32 = Math.fround;
  const plane = height * width;
  const images: Uint8Array[] = [];
  for (let b = 0; b < batch; b++) {
    const rgb = new Uint8Array(plane * channels);
    const base = b * channels * plane;
    for (let c = 0; c < channels; c++) {
      for (let p = 0; p < plane; p++) {
        let u = f32(f32(sample[base + c * plane + p] / 2) + 0.5);
        u = u < 0 ? 0 : u > 1 ? 1 : u;
        const v = f32(u * 255);
        let r = Math.round(v);
        if (r - v === 0.5 && r % 2 === 1) r -= 1;
        rgb[p * channels + c] = r;
      }
    }
    images.push(rgb);
  }
  return images;
}

/** Everything a worker holds: the tokenizer, three sessions, and the per-batch pipeline. */
export class InferencePipeline {
  private constructor(
    private readonly cfg: WorkerConfig,
    private readonly tokenizer: ClipTokenizer,
    private readonly textEncoder: ort.InferenceSession,
    private readonly unet: ort.InferenceSession,
    private readonly vaeDecoder: ort.InferenceSession,
    readonly device: Device,
    readonly notes: string[],
  ) {}

  static async load(cfg: WorkerConfig): Promise<InferencePipeline> {
    const m = cfg.manifest;
    const file = (rel: string) => path.join(cfg.modelDir, rel);
    const settings = { threads: cfg.threads, disablePrepacking: cfg.disablePrepacking };
    const tokenizer = await ClipTokenizer.load(file(m.tokenizer.dir));
    // The first session settles the device (auto -> CUDA or CPU); the others follow it.
    const first = await openSession(file(m.components.unet), cfg.device, settings);
    const notes = first.note ? [first.note] : [];
    const sessions: ort.InferenceSession[] = [first.session];
    try {
      for (const c of [m.components.text_encoder, m.components.vae_decoder]) sessions.push((await openSession(file(c), first.device, settings)).session);
    } catch (e) {
      await Promise.all(sessions.map((s) => s.release()));
      throw e;
    }
    return new InferencePipeline(cfg, tokenizer, sessions[1], first.session, sessions[2], first.device, notes);
  }

  async release(): Promise<void> {
    await Promise.all([this.textEncoder.release(), this.unet.release(), this.vaeDecoder.release()]);
  }

  async generate(batch: ImageRequest[]): Promise<GeneratedImage[]> {
    const m = this.cfg.manifest;
    const t0 = performance.now();
    const n = batch.length;
    const { width, height } = batch[0];
    const f = m.latent.downscale;
    const [h, w, C] = [height / f, width / f, m.latent.channels];
    const latentSize = C * h * w;
    const guided = batch.map((r, i) => (usesGuidance(r.guidance) ? i : -1)).filter((i) => i >= 0);
    const warnings: string[][] = batch.map(() => []);

    // Tokenize: rows = [negatives of guided requests..., prompts of all requests...], as diffusers batches CFG.
    const maxLength = m.tokenizer.max_length;
    const rows = guided.length + n;
    const ids = new BigInt64Array(rows * maxLength);
    const encode = (text: string, row: number, request: number, what: string) => {
      const enc = this.tokenizer.encode(text);
      for (let j = 0; j < maxLength; j++) ids[row * maxLength + j] = BigInt(enc.ids[j]);
      if (enc.truncated) {
        warnings[request].push(`${what} is longer than ${maxLength} tokens: ${enc.nTokens - maxLength} tokens were dropped`);
      }
    };
    guided.forEach((i, row) => encode(batch[i].negativePrompt, row, i, 'negative prompt'));
    batch.forEach((r, i) => encode(r.prompt, guided.length + i, i, 'prompt'));
    const t1 = performance.now();

    const te = await this.textEncoder.run({ input_ids: new ort.Tensor('int64', ids, [rows, maxLength]) });
    const hidden = te.last_hidden_state;
    const t2 = performance.now();

    // Initial latents: each image's noise comes from its own seed only.
    const z = batch.map((r) => {
      let noise = r.latents ?? torchRandn(r.seed, [1, C, h, w]);
      if (noise.length !== latentSize) {
        throw new OnestepError(`request ${r.index}: latents have ${noise.length} values, expected ${latentSize} (${C}x${h}x${w})`);
      }
      if (this.cfg.initLatentMean) noise = informativePrior(this.cfg.initLatentMean, noise, this.cfg.alphaBar, C);
      return noise;
    });
    const sample = new Float32Array(rows * latentSize);
    guided.forEach((i, row) => sample.set(z[i], row * latentSize));
    z.forEach((zi, i) => sample.set(zi, (guided.length + i) * latentSize));
    const timestep = new Float32Array(rows).fill(this.cfg.recipe.timestep);
    const unetOut = await this.unet.run({
      sample: new ort.Tensor('float32', sample, [rows, C, h, w]),
      timestep: new ort.Tensor('float32', timestep, [rows]),
      encoder_hidden_states: hidden,
    });
    const out = unetOut.out_sample;
    const outData = out.data as Float32Array;
    // Models with learned variance (PixArt: 8 channels) give the prediction in the first C channels.
    const outRowSize = (out.dims[1] as number) * h * w;
    const prediction = (row: number) => outData.subarray(row * outRowSize, row * outRowSize + latentSize);

    const decoderInput = new Float32Array(n * latentSize);
    const scale = Math.fround(m.latent.scaling_factor);
    const shift = m.latent.shift_factor ?? 0;
    batch.forEach((r, i) => {
      let eps = prediction(guided.length + i);
      const g = guided.indexOf(i);
      if (g >= 0) eps = applyGuidance(prediction(g), eps, r.guidance);
      const x0 = x0FromModelOutput(this.cfg.recipe.prediction_type, z[i], eps, this.cfg.alphaBar);
      for (let k = 0; k < latentSize; k++) decoderInput[i * latentSize + k] = x0[k] / scale + shift;
    });
    const t3 = performance.now();

    const decoded = await this.vaeDecoder.run({ latent_sample: new ort.Tensor('float32', decoderInput, [n, C, h, w]) });
    let rgb: Uint8Array[];
    if (decoded.image) {
      // A decoder graph built with its uint8 tail already gives NHWC bytes.
      const bytes = decoded.image.data as Uint8Array;
      const size = height * width * 3;
      rgb = batch.map((_, i) => bytes.slice(i * size, (i + 1) * size));
    } else {
      const s = decoded.sample;
      rgb = sampleToRgb(s.data as Float32Array, n, s.dims[1] as number, s.dims[2] as number, s.dims[3] as number);
    }
    for (const t of [te, unetOut, decoded]) for (const v of Object.values(t)) v.dispose();
    const t4 = performance.now();

    const ms: StageTimes = { tokenize: t1 - t0, textEncoder: t2 - t1, denoiser: t3 - t2, decoder: t4 - t3, total: t4 - t0 };
    return batch.map((r, i) => ({ index: r.index, width, height, rgb: rgb[i], warnings: warnings[i], ms }));
  }
}

function failure(e: unknown): WorkerFailure {
  if (e instanceof OnestepError) return { message: e.message, hint: e.hint, onestep: true };
  return { message: e instanceof Error ? (e.stack ?? e.message) : String(e), onestep: false };
}

async function serve(cfg: WorkerConfig): Promise<void> {
  const port = parentPort!;
  let pipeline: InferencePipeline;
  try {
    pipeline = await InferencePipeline.load(cfg);
  } catch (e) {
    port.postMessage({ type: 'failed', error: failure(e) } satisfies FromWorker);
    return;
  }
  port.postMessage({ type: 'ready', device: pipeline.device, notes: pipeline.notes } satisfies FromWorker);
  // One batch at a time: messages queue up while a batch runs.
  let queue = Promise.resolve();
  port.on('message', (msg: ToWorker) => {
    queue = queue.then(async () => {
      if (msg.type === 'close') {
        await pipeline.release();
        port.close();
        return;
      }
      try {
        const images = await pipeline.generate(msg.batch);
        port.postMessage({ type: 'done', id: msg.id, images } satisfies FromWorker, images.map((img) => img.rgb.buffer as ArrayBuffer));
      } catch (e) {
        port.postMessage({ type: 'failed', id: msg.id, error: failure(e) } satisfies FromWorker);
      }
    });
  });
}

if (!isMainThread && workerData?.onestepEngine) void serve(workerData.onestepEngine as WorkerConfig);

