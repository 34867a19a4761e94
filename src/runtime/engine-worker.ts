/**
 * The body of an inference worker thread (session.run blocks its thread, so inference never runs on the main one).
 * Each worker loads the tokenizers and sessions model.json names once, then turns batches of requests into RGB bytes.
 * The loop is the same for every family; model.json says what feeds what (runtime/model-dir.ts):
 *
 *   tokenize -> conditioning graphs [negatives of guided requests..., prompts...] -> noise per image from its own seed
 *   -> denoiser at the recipe timestep -> guidance -> x0 -> VAE decoder (x0 / scaling_factor + shift_factor) -> uint8 HWC
 */
import { numel } from '../checkpoint/weight-source.js';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { OnestepError } from '../errors.js';
import { openSession, type CacheUse, type Device, type DeviceRequest } from './device.js';
import type { ConditioningEntry, ModelManifest, OneStepRecipe } from './model-dir.js';
import { torchRandn } from './noise.js';
import { img2imgDraws, img2imgTimestep, noisedInitLatents } from './img2img.js';
import { applyGuidance, informativePrior, usesGuidance, x0FromModelOutput } from './one-step.js';
import { alphaBar } from './schedule.js';
import { loadTokenizer, type PromptTokenizer } from './tokenizer.js';

export interface ImageRequest {
  index: number;
  prompt: string;
  /** undefined: none given (families with 'zeros-when-absent' negatives then use zeros, the others encode ""). */
  negativePrompt?: string;
  seed: bigint;
  width: number;
  height: number;
  guidance: number;
  /** Exact initial noise [C, h/8, w/8]; replaces the seeded noise. */
  latents?: Float32Array;
  /** SDXL's six time ids (orig_h, orig_w, crop_top, crop_left, target_h, target_w); default: h, w, 0, 0, h, w. */
  timeIds?: number[];
  /** Image-to-image: the init image [3, height, width] in [-1, 1] (NCHW order) and the strength (runtime/img2img.ts). */
  init?: { image: Float32Array; strength: number };
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
  /**
   * Set when the model gave NaN or Inf for this image (in the latents it decodes, or in the decoded sample): rgb is
   * then empty, and the image must not be written (it would be black or noise, not the image asked for).
   */
  nonFinite?: string;
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
  /** ORT's optimized-graph cache (default on; convert's int8 calibration runs probe graphs without it). */
  graphCache?: boolean;
  /** ORT's optimization level (SessionSettings.optimization). */
  optimization?: 'all' | 'basic';
}

export interface SessionLoad {
  component: string;
  ms: number;
  cache?: CacheUse;
}

export type ToWorker = { type: 'generate'; id: number; batch: ImageRequest[] } | { type: 'close' };
export interface WorkerFailure {
  message: string;
  hint?: string;
  onestep: boolean;
}
export type FromWorker =
  | { type: 'ready'; device: Device; notes: string[]; loads: SessionLoad[] }
  | { type: 'done'; id: number; images: GeneratedImage[] }
  | { type: 'failed'; id?: number; error: WorkerFailure };

function allFinite(values: Float32Array): boolean {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return false;
  return true;
}

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

interface LoadedConditioning {
  entry: ConditioningEntry;
  tokenizer: PromptTokenizer;
  session: ort.InferenceSession;
}

/** A float32 tensor being assembled: the conditioning outputs that feed one denoiser input, concatenated. */
interface Collected {
  parts: { data: Float32Array; dims: number[] }[];
}

/** Concatenates [rows, ..., d_i] parts on the last axis. */
function concatLastAxis(parts: { data: Float32Array; dims: number[] }[]): { data: Float32Array; dims: number[] } {
  if (parts.length === 1) return parts[0];
  const lead = parts[0].dims.slice(0, -1);
  const outer = numel(lead);
  const widths = parts.map((p) => p.dims[p.dims.length - 1]);
  const total = widths.reduce((a, b) => a + b, 0);
  for (const p of parts) {
    if (p.dims.slice(0, -1).join() !== lead.join()) throw new OnestepError(`conditioning outputs of shapes [${parts.map((q) => q.dims).join('], [')}] cannot be concatenated`);
  }
  const data = new Float32Array(outer * total);
  for (let o = 0; o < outer; o++) {
    let at = o * total;
    parts.forEach((p, k) => {
      data.set(p.data.subarray(o * widths[k], (o + 1) * widths[k]), at);
      at += widths[k];
    });
  }
  return { data, dims: [...lead, total] };
}

/** Everything a worker holds: tokenizers and sessions, and the per-batch pipeline. */
export class InferencePipeline {
  private constructor(
    private readonly cfg: WorkerConfig,
    private readonly conditioning: LoadedConditioning[],
    private readonly denoiser: ort.InferenceSession,
    private readonly vaeDecoder: ort.InferenceSession,
    readonly device: Device,
    readonly notes: string[],
    /** How long each part took to load (sessions created in parallel overlap). */
    readonly loads: SessionLoad[],
  ) {}

  /** Sees every output of each denoiser and decoder run (convert's int8 calibration reads its probes' ranges). */
  onRun?: (graph: 'denoiser' | 'decoder', outputs: ort.InferenceSession.ReturnType) => void;

  /** The VAE encoder, opened on the first image-to-image batch (text-to-image runs never pay for it). */
  private vaeEncoder?: Promise<ort.InferenceSession>;

  static async load(cfg: WorkerConfig): Promise<InferencePipeline> {
    const m = cfg.manifest;
    const file = (rel: string) => path.join(cfg.modelDir, rel);
    const settings = { threads: cfg.threads, disablePrepacking: cfg.disablePrepacking, graphCache: cfg.graphCache, optimization: cfg.optimization };
    const t0 = performance.now();
    const tokenizers = await Promise.all(m.conditioning.map((c) => loadTokenizer(file(c.tokenizer))));
    const loads: SessionLoad[] = [{ component: 'tokenizer', ms: performance.now() - t0 }];
    // Denoiser, decoder, then the conditioning graphs (the order `sessions` is read in below).
    const graphs = [m.denoiser.graph, m.decoder.graph, ...m.conditioning.map((c) => c.graph)];
    const opened: Awaited<ReturnType<typeof openSession>>[] = [];
    try {
      // With `auto` the first session settles the device (CUDA or CPU) and the others follow it; once the device is
      // known, sessions are created in parallel (ORT creates them off the JS thread).
      const settled = cfg.device.kind !== 'auto';
      if (!settled) opened.push(await openSession(file(graphs[0]), cfg.device, settings));
      const device = settled ? (cfg.device as Device) : opened[0].device;
      const rest = await Promise.allSettled(graphs.slice(opened.length).map((g) => openSession(file(g), device, settings)));
      for (const r of rest) if (r.status === 'fulfilled') opened.push(r.value);
      const failed = rest.find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    } catch (e) {
      await Promise.all(opened.map((o) => o.session.release()));
      throw e;
    }
    opened.forEach((o, i) => loads.push({ component: graphs[i].replace(/\.onnx$/, ''), ms: o.loadMs, cache: o.cache }));
    const sessions = opened.map((o) => o.session);
    const notes = opened[0].note ? [opened[0].note] : [];
    const conditioning = m.conditioning.map((entry, i) => ({ entry, tokenizer: tokenizers[i], session: sessions[2 + i] }));
    return new InferencePipeline(cfg, conditioning, sessions[0], sessions[1], opened[0].device, notes, loads);
  }

  async release(): Promise<void> {
    const encoder = await this.vaeEncoder?.catch(() => undefined);
    await Promise.all([this.denoiser.release(), this.vaeDecoder.release(), encoder?.release(), ...this.conditioning.map((c) => c.session.release())]);
  }

  /**
   * x_t of the image-to-image requests of a batch (by batch index): their images encoded in one run, then the posterior
   * sample and the noise from each request's own seed (runtime/img2img.ts).
   */
  private async initLatents(batch: ImageRequest[], alphaBars: number[], [C, h, w]: number[]): Promise<Map<number, Float32Array>> {
    const m = this.cfg.manifest;
    const todo = batch.flatMap((r, i) => (r.init ? [i] : []));
    const out = new Map<number, Float32Array>();
    if (todo.length === 0) return out;
    if (!m.encoder) {
      throw new OnestepError(
        'this model has no VAE encoder, so it cannot do image-to-image',
        m.decoder.kind === 'taesd' && m.family !== 'sdxs'
          ? 'Its decoder is TAESD; convert the checkpoint again without --taesd (its VAE encoder is kept) for image-to-image.'
          : 'Convert the checkpoint again with this onestep (an AutoencoderTiny without encoder weights cannot encode).',
      );
    }
    if (this.cfg.recipe.prediction_type === 'flow') throw new OnestepError('image-to-image needs a diffusion model; flow models (InstaFlow) start from noise only');
    this.vaeEncoder ??= openSession(path.join(this.cfg.modelDir, m.encoder.graph), this.device, { threads: this.cfg.threads, disablePrepacking: this.cfg.disablePrepacking }).then((o) => o.session);
    const encoder = await this.vaeEncoder;
    const { width, height } = batch[0];
    const imageSize = 3 * height * width;
    const images = new Float32Array(todo.length * imageSize);
    todo.forEach((i, k) => {
      const img = batch[i].init!.image;
      if (img.length !== imageSize) throw new OnestepError(`request ${batch[i].index}: init image has ${img.length} values, expected 3x${height}x${width}`);
      images.set(img, k * imageSize);
    });
    const enc = await encoder.run({ sample: new ort.Tensor('float32', images, [todo.length, 3, height, width]) });
    // AutoencoderKL: the posterior's mean and std; TAESD: latents (runtime/img2img.ts).
    const taesd = m.encoder.kind === 'taesd';
    const mean = (taesd ? enc.latents : enc.latent_dist_mean).data as Float32Array;
    const std = taesd ? undefined : (enc.latent_dist_std.data as Float32Array);
    const size = C * h * w;
    todo.forEach((i, k) => {
      const draws = img2imgDraws(batch[i].seed, size, !taesd);
      out.set(i, noisedInitLatents(mean.subarray(k * size, (k + 1) * size), std?.subarray(k * size, (k + 1) * size), draws, m.latent, alphaBars[i]));
    });
    for (const v of Object.values(enc)) v.dispose();
    return out;
  }

  /**
   * The conditioning inputs of the denoiser for rows [negatives of `guided`..., prompts of `batch`...]: each entry's
   * tokenizer and graph, outputs routed to the denoiser inputs model.json names.
   */
  private async condition(batch: ImageRequest[], guided: number[], warnings: string[][]): Promise<Record<string, ort.Tensor>> {
    const m = this.cfg.manifest;
    const rows = guided.length + batch.length;
    // SDXL's force_zeros_for_empty_prompt: a guided request without any negative prompt gets zeros.
    const zeroRows = guided.flatMap((i, row) => (m.negative === 'zeros-when-absent' && batch[i].negativePrompt === undefined ? [row] : []));
    const collected = new Map<string, Collected>();
    const feeds: Record<string, ort.Tensor> = {};
    for (const { entry, tokenizer, session } of this.conditioning) {
      const L = entry.max_length;
      const ids = new BigInt64Array(rows * L);
      const mask = new BigInt64Array(rows * L);
      const encode = (text: string, row: number, request: number, what: string) => {
        const enc = tokenizer.encode(text);
        for (let j = 0; j < L; j++) {
          ids[row * L + j] = BigInt(enc.ids[j]);
          mask[row * L + j] = BigInt(enc.mask ? enc.mask[j] : 1);
        }
        if (enc.truncated) warnings[request].push(`${what} is longer than ${L} tokens: ${enc.nTokens - L} tokens were dropped`);
      };
      guided.forEach((i, row) => encode(batch[i].negativePrompt ?? '', row, i, 'negative prompt'));
      batch.forEach((r, i) => encode(r.prompt, guided.length + i, i, 'prompt'));
      const idsTensor = new ort.Tensor('int64', ids, [rows, L]);
      const maskTensor = new ort.Tensor('int64', mask, [rows, L]);
      const out = await session.run(entry.attention_mask ? { input_ids: idsTensor, attention_mask: maskTensor } : { input_ids: idsTensor });
      for (const [output, target] of Object.entries(entry.outputs)) {
        const t = out[output];
        if (!t) throw new OnestepError(`${entry.graph} has no output "${output}" (model.json names it)`, 'Convert the checkpoint again.');
        const c = collected.get(target) ?? { parts: [] };
        c.parts.push({ data: t.data as Float32Array, dims: t.dims as number[] });
        collected.set(target, c);
      }
      if (entry.mask_to) feeds[entry.mask_to] = maskTensor;
    }
    for (const [target, c] of collected) {
      const { data, dims } = concatLastAxis(c.parts);
      const rowSize = data.length / rows;
      for (const row of zeroRows) data.fill(0, row * rowSize, (row + 1) * rowSize);
      feeds[target] = new ort.Tensor('float32', data, dims);
    }
    return feeds;
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
    const rows = guided.length + n;
    // Row k of every tensor: the negative of guided[k] for k < guided.length, then request k - guided.length.
    const requestOfRow = (row: number) => batch[row < guided.length ? guided[row] : row - guided.length];
    const t1 = performance.now();

    const feeds = await this.condition(batch, guided, warnings);
    const t2 = performance.now();

    // Image-to-image requests are denoised at the timestep of their strength; the others at the recipe's.
    const scheduler = m.configs.scheduler;
    const timesteps = batch.map((r) => (r.init ? img2imgTimestep(r.init.strength, scheduler.num_train_timesteps) : this.cfg.recipe.timestep));
    const alphaBars = batch.map((r, i) => (r.init ? alphaBar(scheduler, timesteps[i]) : this.cfg.alphaBar));
    const initLatents = await this.initLatents(batch, alphaBars, [C, h, w]);

    // Initial latents: each image's noise comes from its own seed only.
    const z = batch.map((r, i) => {
      const init = initLatents.get(i);
      if (init) return init;
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
    const perRow = (width: number, values: (r: ImageRequest) => number[]) =>
      new ort.Tensor('float32', Float32Array.from({ length: rows * width }, (_, k) => values(requestOfRow(Math.floor(k / width)))[k % width]), [rows, width]);
    const computed: Record<string, () => ort.Tensor> = {
      sample: () => new ort.Tensor('float32', sample, [rows, C, h, w]),
      timestep: () => new ort.Tensor('float32', Float32Array.from({ length: rows }, (_, row) => timesteps[batch.indexOf(requestOfRow(row))]), [rows]),
      time_ids: () => perRow(6, (r) => r.timeIds ?? [height, width, 0, 0, height, width]),
      resolution: () => perRow(2, () => [height, width]),
      aspect_ratio: () => perRow(1, () => [height / width]),
    };
    for (const input of m.denoiser.inputs) {
      if (input in feeds) continue;
      const make = computed[input];
      if (!make) throw new OnestepError(`${m.denoiser.graph} takes an input "${input}" that nothing in model.json supplies`, 'Convert the checkpoint again, or upgrade onestep.');
      feeds[input] = make();
    }
    const denoiserFeeds = Object.fromEntries(m.denoiser.inputs.map((k) => [k, feeds[k]]));
    const denoised = await this.denoiser.run(denoiserFeeds);
    this.onRun?.('denoiser', denoised);
    const out = denoised.out_sample;
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
      const x0 = x0FromModelOutput(this.cfg.recipe.prediction_type, z[i], eps, alphaBars[i]);
      for (let k = 0; k < latentSize; k++) decoderInput[i * latentSize + k] = x0[k] / scale + shift;
    });
    const t3 = performance.now();
    const nonFinite: (string | undefined)[] = batch.map((_, i) =>
      allFinite(decoderInput.subarray(i * latentSize, (i + 1) * latentSize)) ? undefined : 'the denoiser gave NaN or Inf latents',
    );

    // On CPU the decoder runs one image at a time: its activations grow with the batch (about 1 GB per 512x512 image
    // for SD's VAE, the largest allocation of the whole pipeline) while its time per image does not. A GPU decodes
    // the whole batch at once, for throughput.
    const slice = this.device.kind === 'cpu' ? 1 : n;
    const rgb: Uint8Array[] = [];
    for (let at = 0; at < n; at += slice) {
      const k = Math.min(slice, n - at);
      const input = decoderInput.subarray(at * latentSize, (at + k) * latentSize);
      const decoded = await this.vaeDecoder.run({ latent_sample: new ort.Tensor('float32', input, [k, C, h, w]) });
      this.onRun?.('decoder', decoded);
      if (decoded.image) {
        // A decoder graph built with its uint8 tail already gives NHWC bytes.
        const bytes = decoded.image.data as Uint8Array;
        const size = height * width * 3;
        for (let i = 0; i < k; i++) rgb.push(bytes.slice(i * size, (i + 1) * size));
      } else {
        const s = decoded.sample;
        const data = s.data as Float32Array;
        const per = data.length / k;
        for (let i = 0; i < k; i++) nonFinite[at + i] ??= allFinite(data.subarray(i * per, (i + 1) * per)) ? undefined : 'the decoder gave NaN or Inf';
        rgb.push(...sampleToRgb(data, k, s.dims[1] as number, s.dims[2] as number, s.dims[3] as number));
      }
      for (const v of Object.values(decoded)) v.dispose();
    }
    for (const v of Object.values(denoised)) v.dispose();
    const t4 = performance.now();

    const ms: StageTimes = { tokenize: t1 - t0, textEncoder: t2 - t1, denoiser: t3 - t2, decoder: t4 - t3, total: t4 - t0 };
    return batch.map((r, i) =>
      nonFinite[i] ? { index: r.index, width, height, rgb: new Uint8Array(0), warnings: warnings[i], nonFinite: nonFinite[i], ms } : { index: r.index, width, height, rgb: rgb[i], warnings: warnings[i], ms },
    );
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
  port.postMessage({ type: 'ready', device: pipeline.device, notes: pipeline.notes, loads: pipeline.loads } satisfies FromWorker);
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

