/**
 * `onestep generate`: prompts stream from the source through batching into the inference engine (worker threads),
 * and images are encoded and written as soon as they exist, while the next batches run. Bounded in-flight work
 * keeps memory flat for any prompt file length.
 */
import { img2imgTimestep } from './runtime/img2img.js';
import { InitImages, initImageSize, loadInitImage } from './io/init-image.js';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { OnestepError, BadInputError } from './errors.js';
import { removeStaleTemps } from './io/atomic.js';
import { encodeImage, formatParameters, type ImageFormat } from './io/images.js';
import { lockFolder } from './io/lock.js';
import { MANIFEST_FILE, openManifest, resumeDifferences, toManifestEntry, type ManifestEntry, type ManifestInput } from './io/manifest.js';
import { FilesOutput, type ImageOutput, type OutputFormat } from './io/outputs.js';
import { WebDatasetOutput } from './io/webdataset.js';
import { imageOrdinal, imagesOf, type ImageRecord } from './plan.js';
import { writeGrid } from './grid.js';
import { NameAllocator } from './io/names.js';
import { parseSide, readPrompts, resolveSeed, type PromptRecord, type PromptSummary } from './io/prompts.js';
import type { Shard } from './io/shard.js';
import type { PredictionType } from './checkpoint/configs.js';
import { openTensorFile } from './safetensors/tensor-file.js';
import type { ModelManifest } from './runtime/model-dir.js';
import { OneStepEngine, type GeneratedImage, type ImageRequest } from './runtime/engine.js';
import { ONESTEP_VERSION } from './convert.js';

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

/** One float32 tensor [N, C, h, w] whose row i is the initial noise of prompt i. */
async function loadLatents(file: string): Promise<{ shape: number[]; data: Float32Array }> {
  const st = await openTensorFile(file);
  try {
    const names = [...st.tensors.keys()];
    if (names.length !== 1) throw new BadInputError(file, `--latents needs exactly one tensor, found ${names.length}`);
    const info = st.tensors.get(names[0])!;
    if (info.shape.length !== 4) throw new BadInputError(file, `--latents tensor must be [N, C, H/8, W/8], got [${info.shape}]`);
    return { shape: info.shape, data: await st.readF32(names[0]) };
  } finally {
    await st.close();
  }
}

async function loadLatentMean(file: string): Promise<Float32Array> {
  const st = await openTensorFile(file);
  try {
    const names = [...st.tensors.keys()];
    if (names.length !== 1) throw new BadInputError(file, `--init-latent-mean needs exactly one tensor, found ${names.length}`);
    return await st.readF32(names[0]);
  } finally {
    await st.close();
  }
}

/** How long the prompt source may stay quiet before partial batches run without waiting to fill up. */
const IDLE_FLUSH_MS = 1000;

class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

/**
 * What decides the images beside the checkpoint's hash (`model` in the manifest): the LoRAs and their scales, the
 * dtype, the decoder. Not the file's name: a renamed checkpoint makes the same images.
 */
function modelIdentity(m: ModelManifest): string {
  const what = { sha256: m.source.sha256, loras: m.source.loras.map((l) => [l.sha256, l.scale]), dtype: m.dtype, decoder: m.decoder.kind };
  return createHash('sha256').update(JSON.stringify(what)).digest('hex').slice(0, 16);
}

/**
 * --resume found a prompt whose manifest line was made differently (another seed, model, size, prompt text, ...).
 * The run stops rather than regenerating it: an output folder is one consistent set of images, and a changed
 * setting is far more often a mistake (a forgotten --seed, another --model) than a wish to redo everything; silently
 * regenerating would mix two settings in one folder, or redo thousands of images. The message says what changed.
 */
function resumeMismatch(out: string, r: PromptRecord, old: ManifestEntry, now: ManifestEntry): OnestepError {
  const changes = resumeDifferences(old, now);
  return new OnestepError(
    `--resume: prompt ${r.index} (line ${r.line}) in ${path.join(out, MANIFEST_FILE)} was made with other settings than this run: ${changes.join('; ')}.`,
    'Rerun with the settings of the first run (without --seed the seed is random: pass the one the first run printed), ' +
      'or write to another folder with -o. To redo some images on purpose, delete their lines from manifest.jsonl.',
  );
}

/** --width / --height: the JSONL lines' rule (io/prompts.ts parseSide), checked before any model is loaded or converted. */
export function checkImageSize(width: number | undefined, height: number | undefined): void {
  for (const [flag, side] of [['width', width], ['height', height]] as const) if (side !== undefined) parseSide(`--${flag}`, side);
}

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
  const names = new NameAllocator(opts.nameTemplate, opts.format === 'jpeg' ? 'jpg' : opts.format, manifest.existing());
  const modelHash = m.source.sha256;
  const modelId = modelIdentity(m);
  const { prediction_type: prediction, timestep } = engine.recipe;
  const modelName = m.source.name.replace(/\.safetensors$/, '');
  const stageMs: Record<string, number> = { tokenize: 0, textEncoder: 0, denoiser: 0, decoder: 0, encode: 0, write: 0 };
  let images = 0;
  let skippedExisting = 0;
  let dropped = 0;
  let nonFinite = 0;
  let summary: PromptSummary | undefined;
  let failure: unknown;

  const initImages = await InitImages.open(opts.initImage, typeof source === 'string' ? source : undefined);
  const defaultWidth = opts.width ?? m.default_size.width;
  const defaultHeight = opts.height ?? m.default_size.height;
  const downscale = m.latent.downscale;
  // Batches in flight: per worker one running and one ready (a worker never waits on the prompt reader), plus enough
  // being encoded and written to keep libuv's thread pool busy (sharp's encoders and fs writes run there, one image
  // per thread): with small batches from a fast GPU, one batch being written would cap writing at batch-size encodes
  // at a time. A batch holds its slot until its images are written, so slow writes hold back the reader (memory stays
  // flat) instead of piling up decoded images.
  const writeThreads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  const inflight = new Semaphore(2 * (opts.workers ?? 1) + Math.ceil(writeThreads / opts.batchSize));
  const pending = new Set<Promise<void>>();
  const batches = new Map<string, ImageRequest[]>();
  const records = new Map<number, PromptRecord>();
  const inits = new Map<number, { initImage: string; strength: number; timestep: number }>();

  const toRequest = (r: PromptRecord, imageSize?: { width: number; height: number }): ImageRequest => {
    const width = r.width ?? opts.width ?? imageSize?.width ?? defaultWidth;
    const height = r.height ?? opts.height ?? imageSize?.height ?? defaultHeight;
    if (width % downscale || height % downscale) {
      throw new OnestepError(`prompt ${r.index} (line ${r.line}): ${width}x${height} is not a multiple of ${downscale}`);
    }
    const req: ImageRequest = {
      index: r.index,
      prompt: r.prompt,
      negativePrompt: r.negativePrompt ?? opts.negativePrompt,
      seed: resolveSeed(r, opts.seed),
      width,
      height,
      guidance: r.guidance ?? opts.guidance ?? m.recipe.guidance,
    };
    // SDXL's size conditioning: the image size and crop (0, 0) unless the line says otherwise.
    if (r.originalSize || r.cropsCoordsTopLeft || r.targetSize) {
      req.timeIds = [...(r.originalSize ?? [height, width]), ...(r.cropsCoordsTopLeft ?? [0, 0]), ...(r.targetSize ?? [height, width])];
    }
    if (latents) {
      const [n, c, h, w] = latents.shape;
      const need = [m.latent.channels, height / downscale, width / downscale];
      const hint = `--latents row i is the noise of prompt i: give a tensor [N, ${need.join(', ')}] with N >= the prompt count for ${width}x${height} images, or change --width/--height to fit it.`;
      if (r.index >= n) throw new BadInputError(opts.latentsFile!, `holds noise for ${n} prompts; prompt ${r.index} (line ${r.line}) has none.`, hint);
      if (c !== need[0] || h !== need[1] || w !== need[2]) {
        throw new BadInputError(opts.latentsFile!, `rows are [${c}, ${h}, ${w}], prompt ${r.index} (line ${r.line}, ${width}x${height}) needs [${need.join(', ')}].`, hint);
      }
      const size = c * h * w;
      req.latents = latents.data.slice(r.index * size, (r.index + 1) * size);
    }
    return req;
  };

  /** Encodes and writes one image; returns its A1111 parameters text. */
  const write = async (img: GeneratedImage): Promise<string> => {
    const r = records.get(img.index)!;
    records.delete(img.index);
    const req = { seed: resolveSeed(r, opts.seed), guidance: r.guidance ?? opts.guidance ?? m.recipe.guidance };
    const negativePrompt = r.negativePrompt ?? opts.negativePrompt;
    const parameters = formatParameters({
      prompt: r.prompt,
      negativePrompt: negativePrompt || undefined,
      guidance: req.guidance,
      seed: req.seed,
      width: img.width,
      height: img.height,
      modelHash,
      modelName,
      version: ONESTEP_VERSION,
    });
    const encodeStarted = performance.now();
    const data = await encodeImage(img.rgb, img.width, img.height, { format: opts.format, quality: opts.quality, parameters });
    const sameBytes = (name: string) => {
      try {
        return readFileSync(path.join(opts.out, name)).equals(data);
      } catch {
        return false;
      }
    };
    const file = names.allocate({ index: img.index, seed: req.seed, prompt: r.prompt, name: r.name, width: img.width, height: img.height }, sameBytes);
    const writeStarted = performance.now();
    const encodeMs = writeStarted - encodeStarted;
    stageMs.encode += encodeMs;
    for (const w of img.warnings) opts.onWarning?.(`prompt ${img.index} (line ${r.line}): ${w}`);
    const entry = {
      index: img.index,
      prompt: r.prompt,
      negativePrompt,
      seed: req.seed,
      width: img.width,
      height: img.height,
      guidance: req.guidance,
      name: r.name,
      file,
      model: modelHash,
      modelId,
      prediction,
      timestep,
      ...inits.get(img.index),
      modelName,
      ms: Object.fromEntries(Object.entries({ ...img.ms, encode: encodeMs }).map(([k, v]) => [k, Math.round(v * 10) / 10])),
    };
    inits.delete(img.index);
    await output.write({ entry, data });
    stageMs.write += performance.now() - writeStarted;
    images++;
    opts.onImage?.(images, { ...img, file });
    return parameters;
  };

  const dispatch = async (batch: ImageRequest[]): Promise<void> => {
    await inflight.acquire();
    if (opts.signal?.aborted) {
      // Stopped while this batch waited for a slot: it never started, so it is left for a later --resume.
      inflight.release();
      return;
    }
    let written = 0;
    const job = (async () => {
      try {
        const out = await engine.generate(batch);
        for (const img of out) {
          stageMs.tokenize += img.ms.tokenize / out.length;
          stageMs.textEncoder += img.ms.textEncoder / out.length;
          stageMs.denoiser += img.ms.denoiser / out.length;
          stageMs.decoder += img.ms.decoder / out.length;
        }
        // NaN/Inf from the model is never written as a (black) image nor recorded as done: reported per prompt.
        const good = out.filter((img) => {
          if (!img.nonFinite) return true;
          const r = records.get(img.index)!;
          records.delete(img.index);
          nonFinite++;
          written++;
          opts.onWarning?.(`prompt ${img.index} (line ${r.line}): ${img.nonFinite}; the image was not written (a later --resume tries it again)`);
          return false;
        });
        const parameters = await Promise.all(good.map((img) => write(img).then((p) => (written++, p))));
        if (opts.grid && good.length > 1) await writeGrid(opts.out, good[0].index, good, parameters[0]);
      } catch (err) {
        // After an interrupt, atomic writes in flight may have had their temp files removed: those images are dropped.
        if (opts.signal?.aborted) dropped += batch.length - written;
        else failure ??= err;
      } finally {
        inflight.release();
      }
    })();
    pending.add(job);
    job.finally(() => pending.delete(job));
  };

  /** Queues one image (or skips it on --resume); false when the run must stop. */
  const add = async (r: ImageRecord): Promise<boolean> => {
    // A folder of init images pairs with prompts (all images of prompt i start from its i-th file).
    const initFile = initImages.fileFor(r.promptIndex, r.image);
    const req = toRequest(r, initFile ? await initImageSize(initFile, downscale) : undefined);
    // What decides an image-to-image result besides the prompt: the init image's bytes, the strength, its timestep.
    const strength = r.strength ?? opts.strength ?? 0.5;
    const init = initFile ? { initImage: await initImages.sha256(initFile), strength, timestep: img2imgTimestep(strength, m.configs.scheduler.num_train_timesteps) } : undefined;
    if (init) inits.set(r.index, init);
    if (opts.resume && output.isDone(r.index)) {
      const now: ManifestInput = {
        index: r.index,
        prompt: r.prompt,
        negativePrompt: r.negativePrompt ?? opts.negativePrompt,
        seed: req.seed,
        width: req.width,
        height: req.height,
        guidance: req.guidance,
        name: r.name,
        file: '',
        model: modelHash,
        modelId,
        prediction,
        timestep,
        ...init,
      };
      const same = await manifest.matches(now);
      if (same !== true) {
        failure ??= resumeMismatch(opts.out, r, same, toManifestEntry(now));
        return false;
      }
      skippedExisting++;
      opts.onSkip?.(skippedExisting);
      return true;
    }
    if (initFile) req.init = { image: await loadInitImage(initFile, req.width, req.height), strength };
    records.set(r.index, r);
    if (output.expect(r.index)) {
      // A new webdataset shard starts: run the partial batches (of other image sizes) so the shards before it finish.
      for (const [key, batch] of batches) {
        batches.delete(key);
        await dispatch(batch);
      }
    }
    const key = `${req.width}x${req.height}`;
    const batch = batches.get(key) ?? [];
    batch.push(req);
    batches.set(key, batch);
    if (batch.length >= opts.batchSize) {
      batches.delete(key);
      await dispatch(batch);
    }
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
      if (batches.size === 0) {
        next = await pendingNext;
      } else {
        // A source that goes quiet (a pipe fed slowly) does not hold back a partial batch: run it after a pause.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const quiet = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), IDLE_FLUSH_MS)));
        const got = await Promise.race([pendingNext, quiet]);
        clearTimeout(timer);
        if (got === undefined) {
          for (const [key, batch] of batches) {
            batches.delete(key);
            await dispatch(batch);
          }
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
    if (!opts.signal?.aborted && !failure) for (const batch of batches.values()) await dispatch(batch);
    while (pending.size) await Promise.all([...pending]);
    if (summary && !failure) await output.inputEnded();
  } finally {
    while (pending.size) await Promise.allSettled([...pending]);
    // Images of a webdataset shard left incomplete by an interrupt are not kept: they count as dropped.
    const discarded = await output.close();
    images -= discarded;
    dropped += discarded;
    await manifest.close();
    await engine.close();
  }
  if (failure) throw failure;
  const seconds = (performance.now() - started) / 1000;
  return {
    model: opts.modelDir,
    device: engine.device,
    out: opts.out,
    seed: opts.seed.toString(),
    images,
    dropped,
    non_finite: nonFinite,
    skipped_existing: skippedExisting,
    bad_lines: summary?.skipped ?? 0,
    prompts_read: summary?.prompts ?? images + skippedExisting,
    seconds: Math.round(seconds * 100) / 100,
    images_per_second: Math.round((images / Math.max(seconds, 1e-9)) * 100) / 100,
    interrupted: !!opts.signal?.aborted,
    stage_ms: Object.fromEntries(Object.entries(stageMs).map(([k, v]) => [k, Math.round(v)])),
  };
}
