/**
 * The sink of `onestep generate`: generated images are encoded, named and written with their manifest line as soon
 * as they exist; NaN/Inf images are reported, never written; `--resume` asks it which images are already done.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ONESTEP_VERSION } from '../convert.js';
import { OnestepError } from '../errors.js';
import { writeGrid } from '../grid.js';
import { encodeImage, formatParameters, type ImageFormat } from '../io/images.js';
import { MANIFEST_FILE, resumeDifferences, toManifestEntry, type Manifest, type ManifestEntry, type ManifestInput } from '../io/manifest.js';
import type { NameAllocator } from '../io/names.js';
import type { ImageOutput } from '../io/outputs.js';
import type { PromptRecord } from '../io/prompts.js';
import type { GeneratedImage, ImageRequest } from '../runtime/engine.js';
import type { ModelManifest } from '../runtime/model-dir.js';
import type { InitRecord } from './requests.js';

/**
 * What decides the images beside the checkpoint's hash (`model` in the manifest): the LoRAs and their scales, the
 * components used instead of the checkpoint's (`--unet`, `--vae`, `--taesd`), the dtype, the decoder, int8. Not the
 * file's name: a renamed checkpoint makes the same images. (Components and int8 enter only where present, so the
 * identity of a model without them is what it always was.)
 */
export function modelIdentity(m: ModelManifest): string {
  const { components } = m.source;
  const what = {
    sha256: m.source.sha256,
    loras: m.source.loras.map((l) => [l.sha256, l.scale]),
    dtype: m.dtype,
    decoder: m.decoder.kind,
    ...(components?.length ? { components: components.map((c) => [c.component, c.sha256]) } : {}),
    ...(m.quantize ? { quantize: m.quantize } : {}),
  };
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

/** What the manifest records of the model, for every image. */
export interface SinkModel {
  hash: string;
  id: string;
  name: string;
  prediction?: string;
  timestep?: number;
}

export interface SinkOptions {
  out: string;
  format: ImageFormat;
  quality?: number;
  /** Also write a grid PNG per batch of more than one image. */
  grid?: boolean;
  output: ImageOutput;
  manifest: Manifest;
  names: NameAllocator;
  model: SinkModel;
  onImage?: (done: number, img: GeneratedImage & { file: string }) => void;
  onSkip?: (skipped: number) => void;
  onWarning?: (message: string) => void;
}

/** An image being made: its prompt line and what its request settled. */
interface Expected {
  record: PromptRecord;
  negativePrompt?: string;
  seed: bigint;
  guidance: number;
  init?: InitRecord;
}

export class ImageSink {
  images = 0;
  skipped = 0;
  nonFinite = 0;
  /** Milliseconds summed over the images, by stage (GenerateSummary.stage_ms). */
  readonly stageMs: Record<string, number> = { tokenize: 0, textEncoder: 0, denoiser: 0, decoder: 0, encode: 0, write: 0 };
  private readonly expected = new Map<number, Expected>();

  constructor(private readonly o: SinkOptions) {}

  /**
   * --resume: true when the output already holds this image, made with these settings (it is skipped); an error
   * saying what changed when it was made with others; false when it is still to be made.
   */
  async done(r: PromptRecord, req: ImageRequest, init: InitRecord | undefined): Promise<boolean | OnestepError> {
    if (!this.o.output.isDone(r.index)) return false;
    const now = this.entry(r.index, { record: r, negativePrompt: req.negativePrompt, seed: req.seed, guidance: req.guidance, init }, req, '');
    const same = await this.o.manifest.matches(now);
    if (same !== true) return resumeMismatch(this.o.out, r, same, toManifestEntry(now));
    this.skipped++;
    this.o.onSkip?.(this.skipped);
    return true;
  }

  /** The image of `req` will be made. True when it starts a new group of the output (a webdataset shard). */
  expect(r: PromptRecord, req: ImageRequest, init: InitRecord | undefined): boolean {
    this.expected.set(r.index, { record: r, negativePrompt: req.negativePrompt, seed: req.seed, guidance: req.guidance, init });
    return this.o.output.expect(r.index);
  }

  /** One engine batch's images; `progress` is called as each is written or given up (NaN/Inf). */
  async writeBatch(images: GeneratedImage[], progress: () => void): Promise<void> {
    for (const img of images) {
      this.stageMs.tokenize += img.ms.tokenize / images.length;
      this.stageMs.textEncoder += img.ms.textEncoder / images.length;
      this.stageMs.denoiser += img.ms.denoiser / images.length;
      this.stageMs.decoder += img.ms.decoder / images.length;
    }
    // NaN/Inf from the model is never written as a (black) image nor recorded as done: reported per prompt.
    const good = images.filter((img) => {
      if (!img.nonFinite) return true;
      const { record } = this.take(img.index);
      this.nonFinite++;
      progress();
      this.o.onWarning?.(`prompt ${img.index} (line ${record.line}): ${img.nonFinite}; the image was not written (a later --resume tries it again)`);
      return false;
    });
    const parameters = await Promise.all(good.map((img) => this.write(img).then((p) => (progress(), p))));
    if (this.o.grid && good.length > 1) await writeGrid(this.o.out, good[0].index, good, parameters[0]);
  }

  private take(index: number): Expected {
    const e = this.expected.get(index)!;
    this.expected.delete(index);
    return e;
  }

  /** The manifest line of an image (`file` '' before it has one). */
  private entry(index: number, e: Expected, size: { width: number; height: number }, file: string): ManifestInput {
    const { hash, id, prediction, timestep } = this.o.model;
    const r = e.record;
    return {
      index,
      prompt: r.prompt,
      negativePrompt: e.negativePrompt,
      seed: e.seed,
      width: size.width,
      height: size.height,
      guidance: e.guidance,
      name: r.name,
      file,
      model: hash,
      modelId: id,
      prediction,
      timestep,
      ...e.init,
    };
  }

  /** Encodes and writes one image; returns its A1111 parameters text. */
  private async write(img: GeneratedImage): Promise<string> {
    const { out, model } = this.o;
    const e = this.take(img.index);
    const r = e.record;
    const parameters = formatParameters({
      prompt: r.prompt,
      negativePrompt: e.negativePrompt || undefined,
      guidance: e.guidance,
      seed: e.seed,
      width: img.width,
      height: img.height,
      modelHash: model.hash,
      modelName: model.name,
      version: ONESTEP_VERSION,
    });
    const encodeStarted = performance.now();
    const data = await encodeImage(img.rgb, img.width, img.height, { format: this.o.format, quality: this.o.quality, parameters });
    const sameBytes = (name: string) => {
      try {
        return readFileSync(path.join(out, name)).equals(data);
      } catch {
        return false;
      }
    };
    const file = this.o.names.allocate({ index: img.index, seed: e.seed, prompt: r.prompt, name: r.name, width: img.width, height: img.height }, sameBytes);
    const writeStarted = performance.now();
    const encodeMs = writeStarted - encodeStarted;
    this.stageMs.encode += encodeMs;
    for (const w of img.warnings) this.o.onWarning?.(`prompt ${img.index} (line ${r.line}): ${w}`);
    const entry: ManifestInput = {
      ...this.entry(img.index, e, img, file),
      modelName: model.name,
      ms: Object.fromEntries(Object.entries({ ...img.ms, encode: encodeMs }).map(([k, v]) => [k, Math.round(v * 10) / 10])),
    };
    await this.o.output.write({ entry, data });
    this.stageMs.write += performance.now() - writeStarted;
    this.images++;
    this.o.onImage?.(this.images, { ...img, file });
    return parameters;
  }
}
