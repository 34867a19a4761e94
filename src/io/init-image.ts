/**
 * Init images of image-to-image requests. Which file a prompt uses: its JSONL line's `image` (relative paths are
 * relative to the prompt file's folder), else `--init-image <file>` for every prompt, or `--init-image <folder>`,
 * whose images (.png .jpg .jpeg .webp, sorted by name) pair with prompts by index: prompt i takes the i-th file.
 *
 * Size rule: the image is the output's size. When the line or the flags give no width/height, the output takes the
 * image's own size, each side rounded down to a multiple of the VAE factor (8), as diffusers' image processor does;
 * when a size is given and differs, the image is resized to it (Lanczos 3, aspect not kept). Pixels become
 * x / 255 * 2 - 1 in float32, NCHW, as StableDiffusionImg2ImgPipeline feeds its VAE encoder.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { BadInputError } from '../errors.js';

const IMAGE_FILE = /\.(png|jpe?g|webp)$/i;

/** Where prompts find their init images. */
export class InitImages {
  private constructor(
    private readonly promptDir: string,
    private readonly given?: { file?: string; folder?: string[] },
  ) {}

  /** `flag`: the --init-image file or folder; `promptFile`: the prompt file (its folder resolves relative JSONL paths). */
  static async open(flag: string | undefined, promptFile: string | undefined): Promise<InitImages> {
    const promptDir = promptFile && promptFile !== '-' ? path.dirname(path.resolve(promptFile)) : process.cwd();
    if (!flag) return new InitImages(promptDir);
    const st = await stat(flag).catch(() => {
      throw new BadInputError(flag, 'no such file or folder', 'Give an image file or a folder of images to --init-image.');
    });
    if (st.isFile()) return new InitImages(promptDir, { file: flag });
    if (!st.isDirectory()) throw new BadInputError(flag, 'is not a regular file or folder', 'Give an image file or a folder of images to --init-image.');
    const files = (await readdir(flag)).filter((f) => IMAGE_FILE.test(f)).sort();
    if (files.length === 0) throw new BadInputError(flag, 'holds no .png, .jpg or .webp images', 'Put the init images in the folder, or give one image file.');
    return new InitImages(promptDir, { folder: files.map((f) => path.join(flag, f)) });
  }

  private readonly hashes = new Map<string, Promise<string>>();

  /** sha256 of an init image's bytes (what --resume compares), once per file. */
  sha256(file: string): Promise<string> {
    let h = this.hashes.get(file);
    if (!h) {
      h = readFile(file).then((b) => createHash('sha256').update(b).digest('hex'));
      this.hashes.set(file, h);
    }
    return h;
  }

  /** The init image of prompt `index` (`image`: its JSONL line's), or undefined for text-to-image. */
  fileFor(index: number, image: string | undefined): string | undefined {
    if (image !== undefined) return path.resolve(this.promptDir, image);
    if (this.given?.file) return this.given.file;
    if (this.given?.folder) {
      const file = this.given.folder[index];
      if (!file) throw new BadInputError(path.dirname(this.given.folder[0]), `holds ${this.given.folder.length} images, none for prompt ${index}`, 'Give one image per prompt (prompt i takes the i-th file by name).');
      return file;
    }
    return undefined;
  }
}

/** The size an init image gives the output when none is asked for: its own, each side floored to a multiple of `factor`. */
export async function initImageSize(file: string, factor: number): Promise<{ width: number; height: number }> {
  const meta = await sharp(file)
    .metadata()
    .catch((e: Error) => {
      throw new BadInputError(file, `cannot be read as an image (${e.message})`, 'Give a PNG, JPEG or WebP init image.');
    });
  const width = Math.floor((meta.width ?? 0) / factor) * factor;
  const height = Math.floor((meta.height ?? 0) / factor) * factor;
  if (width === 0 || height === 0) throw new BadInputError(file, `is ${meta.width}x${meta.height}, smaller than ${factor} pixels`, 'Give a larger init image.');
  return { width, height };
}

/** The init image as [3, height, width] float32 in [-1, 1], resized to width x height when it differs. */
export async function loadInitImage(file: string, width: number, height: number): Promise<Float32Array> {
  const { data, info } = await sharp(file)
    .removeAlpha()
    .toColorspace('srgb')
    .resize(width, height, { fit: 'fill', kernel: 'lanczos3' })
    .raw()
    .toBuffer({ resolveWithObject: true })
    .catch((e: Error) => {
      throw new BadInputError(file, `cannot be read as an image (${e.message})`, 'Give a PNG, JPEG or WebP init image.');
    });
  if (info.channels !== 3) throw new BadInputError(file, `has ${info.channels} channels after conversion to RGB`);
  const f = Math.fround;
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let p = 0; p < plane; p++) for (let c = 0; c < 3; c++) out[c * plane + p] = f(f(f(data[p * 3 + c] / 255) * 2) - 1);
  return out;
}
