/**
 * The request builder of `onestep generate`: a prompt line and the flags become one image's request (its seed, size,
 * guidance, SDXL time ids, --latents noise row, image-to-image init), checked against the model before it runs.
 */
import { BadInputError, OnestepError } from '../errors.js';
import { initImageSize, loadInitImage, type InitImages } from '../io/init-image.js';
import { parseSide, resolveSeed } from '../io/prompts.js';
import type { ImageRecord } from '../plan.js';
import type { ImageRequest } from '../runtime/engine.js';
import { img2imgTimestep } from '../runtime/img2img.js';
import { openTensorFile } from '../safetensors/tensor-file.js';

/** --width / --height: the JSONL lines' rule (io/prompts.ts parseSide), checked before any model is loaded or converted. */
export function checkImageSize(width: number | undefined, height: number | undefined): void {
  for (const [flag, side] of [['width', width], ['height', height]] as const) if (side !== undefined) parseSide(`--${flag}`, side);
}

/** One float32 tensor [N, C, h, w] whose row i is the initial noise of prompt i. */
export interface Latents {
  shape: number[];
  data: Float32Array;
}

export async function loadLatents(file: string): Promise<Latents> {
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

export async function loadLatentMean(file: string): Promise<Float32Array> {
  const st = await openTensorFile(file);
  try {
    const names = [...st.tensors.keys()];
    if (names.length !== 1) throw new BadInputError(file, `--init-latent-mean needs exactly one tensor, found ${names.length}`);
    return await st.readF32(names[0]);
  } finally {
    await st.close();
  }
}

/** What the requests need to know of the model (its model.json). */
export interface RequestModel {
  defaultSize: { width: number; height: number };
  /** Pixels per latent cell, and latent channels. */
  downscale: number;
  channels: number;
  /** The recipe's guidance. */
  guidance: number;
  /** The scheduler's training steps (image-to-image timesteps are drawn from them). */
  trainTimesteps: number;
}

/** The flags a line's own fields override. */
export interface RequestDefaults {
  seed: bigint;
  width?: number;
  height?: number;
  guidance?: number;
  negativePrompt?: string;
  /** Image-to-image strength where a line gives none (default 0.5). */
  strength?: number;
  latents?: Latents;
  latentsFile?: string;
}

/** What decides an image-to-image result besides the prompt (the manifest records it): the init image's bytes, the strength, its timestep. */
export interface InitRecord {
  initImage: string;
  strength: number;
  timestep: number;
}

/** An image's init image, before its pixels are read. */
export interface PendingInit {
  file: string;
  record: InitRecord;
}

export class RequestBuilder {
  constructor(
    private readonly defaults: RequestDefaults,
    private readonly model: RequestModel,
    private readonly initImages: InitImages,
  ) {}

  /** One image's request, without its init image's pixels (withInitImage reads them once the image will be made). */
  async request(r: ImageRecord): Promise<{ req: ImageRequest; init?: PendingInit }> {
    // A folder of init images pairs with prompts (all images of prompt i start from its i-th file).
    const initFile = this.initImages.fileFor(r.promptIndex, r.image);
    const req = this.build(r, initFile ? await initImageSize(initFile, this.model.downscale) : undefined);
    if (!initFile) return { req };
    const strength = r.strength ?? this.defaults.strength ?? 0.5;
    const record = { initImage: await this.initImages.sha256(initFile), strength, timestep: img2imgTimestep(strength, this.model.trainTimesteps) };
    return { req, init: { file: initFile, record } };
  }

  async withInitImage(req: ImageRequest, init: PendingInit | undefined): Promise<void> {
    if (init) req.init = { image: await loadInitImage(init.file, req.width, req.height), strength: init.record.strength };
  }

  private build(r: ImageRecord, imageSize?: { width: number; height: number }): ImageRequest {
    const { defaults: o, model: m } = this;
    const width = r.width ?? o.width ?? imageSize?.width ?? m.defaultSize.width;
    const height = r.height ?? o.height ?? imageSize?.height ?? m.defaultSize.height;
    if (width % m.downscale || height % m.downscale) {
      throw new OnestepError(`prompt ${r.index} (line ${r.line}): ${width}x${height} is not a multiple of ${m.downscale}`);
    }
    const req: ImageRequest = {
      index: r.index,
      prompt: r.prompt,
      negativePrompt: r.negativePrompt ?? o.negativePrompt,
      seed: resolveSeed(r, o.seed),
      width,
      height,
      guidance: r.guidance ?? o.guidance ?? m.guidance,
    };
    // SDXL's size conditioning: the image size and crop (0, 0) unless the line says otherwise.
    if (r.originalSize || r.cropsCoordsTopLeft || r.targetSize) {
      req.timeIds = [...(r.originalSize ?? [height, width]), ...(r.cropsCoordsTopLeft ?? [0, 0]), ...(r.targetSize ?? [height, width])];
    }
    if (o.latents) {
      const [n, c, h, w] = o.latents.shape;
      const need = [m.channels, height / m.downscale, width / m.downscale];
      const hint = `--latents row i is the noise of prompt i: give a tensor [N, ${need.join(', ')}] with N >= the prompt count for ${width}x${height} images, or change --width/--height to fit it.`;
      if (r.index >= n) throw new BadInputError(o.latentsFile!, `holds noise for ${n} prompts; prompt ${r.index} (line ${r.line}) has none.`, hint);
      if (c !== need[0] || h !== need[1] || w !== need[2]) {
        throw new BadInputError(o.latentsFile!, `rows are [${c}, ${h}, ${w}], prompt ${r.index} (line ${r.line}, ${width}x${height}) needs [${need.join(', ')}].`, hint);
      }
      const size = c * h * w;
      req.latents = o.latents.data.slice(r.index * size, (r.index + 1) * size);
    }
    return req;
  }
}
