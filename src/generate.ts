/**
 * `onestep generate`: prompts stream from the source through batching into the inference engine (worker threads),
 * and images are encoded and written as soon as they exist, while the next batches run. Bounded in-flight work
 * keeps memory flat for any prompt file length. The parts: generate/requests.ts (a prompt line and the flags become
 * an image's request), generate/batcher.ts (requests grouped into engine batches, a bounded number in flight),
 * generate/sink.ts (images encoded and written with their manifest line; what --resume skips).
 */
import type { PredictionType } from './checkpoint/configs.js';
import { Batcher } from './generate/batcher.js';
import { checkImageSize, loadLatentMean, loadLatents, RequestBuilder } from './generate/requests.js';
import { ImageSink, modelIdentity } from './generate/sink.js';
import { removeStaleTemps } from './io/atomic.js';
import type { ImageFormat } from './io/images.js';
import { InitImages } from './io/init-image.js';
import { lockFolder } from './io/lock.js';
import { openManifest } from './io/manifest.js';
import { NameAllocator } from './io/names.js';
import { FilesOutput, type ImageOutput, type OutputFormat } from './io/outputs.js';
import { readPrompts, type PromptRecord, type PromptSummary } from './io/prompts.js';
import type { Shard } from './io/shard.js';
import { WebDatasetOutput } from './io/webdataset.js';
import { imageOrdinal, imagesOf, type ImageRecord } from './plan.js';
import { OneStepEngine, type GeneratedImage, type ImageRequest } from './runtime/engine.js';

export { checkImageSize } from './generate/requests.js';

export interface GenerateOptions {
  modelDir: string;
  out: string;
  batchSize: number;
  seed: bigint;
  device: string;
  workers?: number;
  threads?: number;
  width?: number;
  height?: number;
  guidance?: number;
  negativePrompt?: string;
  prediction?: PredictionType;
  timestep?: number;
  format: ImageFormat;
  quality?: number;
  /** `files` (default: image files + metadata.jsonl) or `webdataset` (tar shards of `shardSize` images). */
  outputFormat?: OutputFormat;
  shardSize?: number;
  /** Also write an A1111-style grid PNG per batch (of more than one image) into `<out>/.grids/`. */
  grid?: boolean;
  /** Images per prompt (default 1): image j of prompt i has index i·n + j, seed base + i·n + j (see plan.ts). */
  imagesPerPrompt?: number;
  nameTemplate: string;
  resume: boolean;
  strict: boolean;
  shard?: Shard;
  latentsFile?: string;
  /** Image-to-image: an init image for every prompt, or a folder of them paired by index (io/init-image.ts). */
  initImage?: string;
  /** Strength of image-to-image where a line gives none (default 0.5). */
  strength?: number;
  initLatentMeanFile?: string;
  /** Stop reading new prompts (SIGINT): in-flight batches finish, the manifest is flushed. */
  signal?: AbortSignal;
  onImage?: (done: number, img: GeneratedImage & { file: string }) => void;
  /** The model is loaded: images start now (for progress rates and ETAs that leave the load out). */
  onReady?: () => void;
  /** --resume skipped one more image its manifest holds; `skipped` counts them so far. */
  onSkip?: (skipped: number) => void;
  onWarning?: (message: string) => void;
  onIssue?: (line: number, message: string) => void;
}

export interface GenerateSummary {
  model: string;
  device: string;
  out: string;
  seed: string;
  images: number;
  dropped: number;
  /** Images the model gave NaN/Inf for: reported, not written, not recorded. */
  non_finite: number;
  skipped_existing: number;
  bad_lines: number;
  prompts_read: number;
  seconds: number;
  images_per_second: number;
  interrupted: boolean;
  /**
   * Milliseconds summed over the images: tokenize, textEncoder, denoiser, decoder (each image's share of its batch's
   * time in the worker), encode (sharp) and write (atomic file write + manifest line).
   */
  stage_ms: Record<string, number>;
}

/** How long the prompt source may stay quiet before partial batches run without waiting to fill up. */
const IDLE_FLUSH_MS = 1000;

export async function generateImages(source: string | NodeJS.ReadableStream, opts: GenerateOptions): Promise<GenerateSummary> {
  const started = performance.now();
  checkImageSize(opts.width, opts.height);
  // Two runs into one folder would both do every prompt and interleave their manifest lines: one run per folder.
  const lock = await lockFolder(opts.out, `onestep generate ${typeof source === 'string' ? source : '-'}`);
  if (lock.tookOverFrom) opts.onWarning?.(`took over the lock of ${opts.out} left by ${lock.tookOverFrom} (no longer running)`);
  try {
    return await generateLocked(source, opts, started);
  } finally {
    await lock.release();
  }
}

async function generateLocked(source: string | NodeJS.ReadableStream, opts: GenerateOptions, started: number): Promise<GenerateSummary> {
  const latents = opts.latentsFile ? await loadLatents(opts.latentsFile) : undefined;
  const initLatentMean = opts.initLatentMeanFile ? await loadLatentMean(opts.initLatentMeanFile) : undefined;
  const engine = await OneStepEngine.load(opts.modelDir, {
    device: opts.device,
    workers: opts.workers,
    threads: opts.threads,
    recipe: {
      ...(opts.prediction ? { prediction_type: opts.prediction } : {}),
      ...(opts.timestep !== undefined ? { timestep: opts.timestep } : {}),
    },
    initLatentMean,
  });
  const m = engine.manifest;
  for (const note of engine.notes) opts.onWarning?.(note);
  opts.onReady?.();
  const manifest = await openManifest(opts.out);
  const stale = (await removeStaleTemps(opts.out)).length;
  if (stale) opts.onWarning?.(`removed ${stale} partial image file(s) left by an interrupted run`);
  const perPrompt = opts.imagesPerPrompt ?? 1;
  const output: ImageOutput =
    opts.outputFormat === 'webdataset'
      ? await WebDatasetOutput.open({
          out: opts.out,
          shardSize: opts.shardSize ?? 1000,
          manifest,
          ordinal: (index) => imageOrdinal(index, perPrompt, opts.shard),
        })
      : new FilesOutput(opts.out, manifest);
  const sink = new ImageSink({
    out: opts.out,
    format: opts.format,
    quality: opts.quality,
    grid: opts.grid,
    output,
    manifest,
    names: new NameAllocator(opts.nameTemplate, opts.format === 'jpeg' ? 'jpg' : opts.format, manifest.existing()),
    model: {
      hash: m.source.sha256,
      id: modelIdentity(m),
      name: m.source.name.replace(/\.safetensors$/, ''),
      prediction: engine.recipe.prediction_type,
      timestep: engine.recipe.timestep,
    },
    onImage: opts.onImage,
    onSkip: opts.onSkip,
    onWarning: opts.onWarning,
  });
  const requests = new RequestBuilder(
    { ...opts, latents },
    {
      defaultSize: m.default_size,
      downscale: m.latent.downscale,
      channels: m.latent.channels,
      guidance: m.recipe.guidance,
      trainTimesteps: m.configs.scheduler.num_train_timesteps,
    },
    await InitImages.open(opts.initImage, typeof source === 'string' ? source : undefined),
  );
  let dropped = 0;
  let summary: PromptSummary | undefined;
  let failure: unknown;

  // Batches in flight: per worker one running and one ready (a worker never waits on the prompt reader), plus enough
  // being encoded and written to keep libuv's thread pool busy (sharp's encoders and fs writes run there, one image
  // per thread): with small batches from a fast GPU, one batch being written would cap writing at batch-size encodes
  // at a time. A batch holds its slot until its images are written, so slow writes hold back the reader (memory stays
  // flat) instead of piling up decoded images.
  const writeThreads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  const batcher = new Batcher<ImageRequest>({
    size: opts.batchSize,
    slots: 2 * (opts.workers ?? 1) + Math.ceil(writeThreads / opts.batchSize),
    key: (req) => `${req.width}x${req.height}`,
    stopped: () => !!opts.signal?.aborted,
    run: async (batch) => {
      let written = 0;
      try {
        await sink.writeBatch(await engine.generate(batch), () => written++);
      } catch (err) {
        // After an interrupt, atomic writes in flight may have had their temp files removed: those images are dropped.
        if (opts.signal?.aborted) dropped += batch.length - written;
        else failure ??= err;
      }
    },
  });

  /** Queues one image (or skips it on --resume); false when the run must stop. */
  const add = async (r: ImageRecord): Promise<boolean> => {
    const { req, init } = await requests.request(r);
    if (opts.resume) {
      const done = await sink.done(r, req, init?.record);
      if (done instanceof Error) {
        failure ??= done;
        return false;
      }
      if (done) return true;
    }
    await requests.withInitImage(req, init);
    // A new webdataset shard starts: run the partial batches (of other image sizes) so the shards before it finish.
    if (sink.expect(r, req, init?.record)) await batcher.flush();
    await batcher.add(req);
    return true;
  };

  try {
    const prompts = readPrompts(source, {
      strict: opts.strict,
      shard: opts.shard,
      onIssue: (i) => opts.onIssue?.(i.line, i.message),
    });
    let pendingNext: Promise<IteratorResult<PromptRecord, PromptSummary>> | undefined;
    for (;;) {
      if (opts.signal?.aborted || failure) break;
      pendingNext ??= prompts.next();
      let next: IteratorResult<PromptRecord, PromptSummary>;
      if (!batcher.filling) {
        next = await pendingNext;
      } else {
        // A source that goes quiet (a pipe fed slowly) does not hold back a partial batch: run it after a pause.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const quiet = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), IDLE_FLUSH_MS)));
        const got = await Promise.race([pendingNext, quiet]);
        clearTimeout(timer);
        if (got === undefined) {
          await batcher.flush();
          continue;
        }
        next = got;
      }
      pendingNext = undefined;
      if (next.done) {
        summary = next.value;
        break;
      }
      if (opts.signal?.aborted) break;
      for (const image of imagesOf(next.value, perPrompt)) if (!(await add(image))) break;
    }
    if (!opts.signal?.aborted && !failure) await batcher.flush();
    await batcher.drain();
    if (summary && !failure) await output.inputEnded();
  } finally {
    await batcher.settle();
    // Images of a webdataset shard left incomplete by an interrupt are not kept: they count as dropped.
    const discarded = await output.close();
    sink.images -= discarded;
    dropped += discarded;
    await manifest.close();
    await engine.close();
  }
  if (failure) throw failure;
  const { images, skipped, nonFinite, stageMs } = sink;
  const seconds = (performance.now() - started) / 1000;
  return {
    model: opts.modelDir,
    device: engine.device,
    out: opts.out,
    seed: opts.seed.toString(),
    images,
    dropped,
    non_finite: nonFinite,
    skipped_existing: skipped,
    bad_lines: summary?.skipped ?? 0,
    prompts_read: summary?.prompts ?? images + skipped,
    seconds: Math.round(seconds * 100) / 100,
    images_per_second: Math.round((images / Math.max(seconds, 1e-9)) * 100) / 100,
    interrupted: !!opts.signal?.aborted,
    stage_ms: Object.fromEntries(Object.entries(stageMs).map(([k, v]) => [k, Math.round(v)])),
  };
}
