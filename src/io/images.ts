import sharp from 'sharp';
import { OnestepError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

export type ImageFormat = 'png' | 'webp' | 'jpeg';
export const IMAGE_FORMATS: readonly ImageFormat[] = ['png', 'webp', 'jpeg'];
export const DEFAULT_QUALITY = 90;

/** What A1111-style readers (A1111/Forge "PNG Info", ComfyUI loaders, civitai) expect in `parameters`. */
export interface GenerationParameters {
  prompt: string;
  negativePrompt?: string;
  guidance: number;
  seed: bigint;
  width: number;
  height: number;
  /** The model's hash; the first 10 hex digits are written, as A1111 does with its sha256-based hash. */
  modelHash: string;
  modelName: string;
  /** onestep's version. */
  version: string;
  steps?: number;
  sampler?: string;
}

// A value with a comma, colon or newline is JSON-quoted, as A1111 does, so the `key: value, ...` line stays parseable.
function quote(value: string): string {
  return /[,:\n]/.test(value) ? JSON.stringify(value) : value;
}

// Python prints floats with a decimal point ("7.0"); A1111 metadata is written that way.
function pythonFloat(value: number): string {
  return Number.isInteger(value) ? value.toFixed(1) : String(value);
}

/** The A1111 `parameters` text: prompt, optional "Negative prompt: ..." line, then the settings line. */
export function formatParameters(p: GenerationParameters): string {
  const settings = [
    `Steps: ${p.steps ?? 1}`,
    `Sampler: ${quote(p.sampler ?? 'onestep')}`,
    `CFG scale: ${pythonFloat(p.guidance)}`,
    `Seed: ${p.seed}`,
    `Size: ${p.width}x${p.height}`,
    `Model hash: ${p.modelHash.slice(0, 10)}`,
    `Model: ${quote(p.modelName)}`,
    `Version: ${quote(`onestep ${p.version}`)}`,
  ].join(', ');
  const lines = [p.prompt];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  lines.push(settings);
  return lines.join('\n');
}

// ---- CRC32 (IEEE 802.3, as PNG uses) ----

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// ---- PNG text chunks ----

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function isAscii(text: string): boolean {
  return /^[\u0001-\u007f]*$/.test(text);
}

/**
 * A PNG text chunk: tEXt for ASCII text, else iTXt (UTF-8, uncompressed). tEXt is Latin-1 by the spec (PIL reads it
 * so), but libvips and many other readers decode it as UTF-8, so any non-ASCII text goes in iTXt, which all read alike.
 */
export function pngTextChunk(keyword: string, text: string): Buffer {
  if (!/^[\u0020-\u007e\u00a1-\u00ff]{1,79}$/.test(keyword) || keyword.startsWith(' ') || keyword.endsWith(' ')) {
    throw new Error(`invalid PNG text keyword "${keyword}"`);
  }
  const key = Buffer.from(keyword, 'latin1');
  const type = isAscii(text) ? 'tEXt' : 'iTXt';
  const data =
    type === 'tEXt'
      ? Buffer.concat([key, Buffer.from([0]), Buffer.from(text, 'latin1')])
      : // keyword \0, compression flag 0, method 0, empty language tag \0, empty translated keyword \0, UTF-8 text
        Buffer.concat([key, Buffer.from([0, 0, 0, 0, 0]), Buffer.from(text, 'utf8')]);
  return pngChunk(type, data);
}

function pngChunk(type: string, data: Buffer): Buffer {
  const chunk = Buffer.alloc(12 + data.length);
  chunk.writeUInt32BE(data.length, 0);
  chunk.write(type, 4, 'latin1');
  data.copy(chunk, 8);
  chunk.writeUInt32BE(crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
  return chunk;
}

/**
 * Inserts `chunk` (a whole chunk, length to CRC) before the first IDAT. The PNG spec allows text chunks after the
 * image data too, but PIL's Image.open (so A1111's "PNG Info") and libvips only read the chunks before IDAT.
 */
export function insertPngChunk(png: Buffer, chunk: Buffer): Buffer {
  if (png.length < 8 || !png.subarray(0, 8).equals(PNG_SIGNATURE)) throw new Error('not a PNG');
  let offset = 8;
  while (offset + 12 <= png.length) {
    const length = png.readUInt32BE(offset);
    const type = png.toString('latin1', offset + 4, offset + 8);
    if (type === 'IDAT' || type === 'IEND') return Buffer.concat([png.subarray(0, offset), chunk, png.subarray(offset)]);
    offset += 12 + length;
  }
  throw new Error('PNG has no IDAT or IEND chunk');
}

// ---- EXIF UserComment (JPEG APP1, WebP EXIF chunk) ----

const USER_COMMENT_UNICODE = Buffer.from('UNICODE\0', 'latin1');
const EXIF_HEADER = Buffer.from('Exif\0\0', 'latin1');

/**
 * A minimal big-endian TIFF/EXIF block with one tag, Exif IFD UserComment = "UNICODE\0" + UTF-16BE text: the bytes
 * A1111 writes with piexif's UserComment.dump(text, encoding="unicode"). IFD0 holds only the pointer to the Exif IFD.
 */
export function exifUserComment(text: string): Buffer {
  const utf16 = Buffer.from(text, 'utf16le').swap16();
  const comment = Buffer.concat([USER_COMMENT_UNICODE, utf16]);
  const ifd0 = 8;
  const exifIfd = ifd0 + 2 + 12 + 4;
  const data = exifIfd + 2 + 12 + 4;
  const tiff = Buffer.alloc(data + comment.length);
  tiff.write('MM', 0, 'latin1');
  tiff.writeUInt16BE(42, 2);
  tiff.writeUInt32BE(ifd0, 4);
  tiff.writeUInt16BE(1, ifd0);
  tiff.writeUInt16BE(0x8769, ifd0 + 2); // ExifIFDPointer
  tiff.writeUInt16BE(4, ifd0 + 4); // LONG
  tiff.writeUInt32BE(1, ifd0 + 6);
  tiff.writeUInt32BE(exifIfd, ifd0 + 10);
  tiff.writeUInt32BE(0, ifd0 + 14); // no next IFD
  tiff.writeUInt16BE(1, exifIfd);
  tiff.writeUInt16BE(0x9286, exifIfd + 2); // UserComment
  tiff.writeUInt16BE(7, exifIfd + 4); // UNDEFINED
  tiff.writeUInt32BE(comment.length, exifIfd + 6);
  tiff.writeUInt32BE(data, exifIfd + 10);
  tiff.writeUInt32BE(0, exifIfd + 14);
  comment.copy(tiff, data);
  return tiff;
}

const MAX_JPEG_SEGMENT = 0xffff - 2;

/** The overhead of exifUserComment's block around the UTF-16 text, plus the Exif header: what a segment holds beside it. */
const JPEG_EXIF_OVERHEAD = EXIF_HEADER.length + exifUserComment('').length;

/**
 * Parameters text that fits a JPEG's 64 KiB EXIF segment (a prompt over ~32k characters does not): the prompt part is
 * cut, with an ellipsis, and the last line (steps, seed, size, model: what a reader of the metadata needs) is kept.
 */
export function fitJpegParameters(text: string): string {
  const maxUnits = Math.floor((MAX_JPEG_SEGMENT - JPEG_EXIF_OVERHEAD) / 2);
  if (text.length <= maxUnits) return text;
  const cut = text.lastIndexOf('\n');
  const tail = cut >= 0 && text.length - cut < maxUnits / 2 ? text.slice(cut) : '';
  let head = text.slice(0, maxUnits - tail.length - 1);
  // Not half a surrogate pair.
  if (/[\ud800-\udbff]$/.test(head)) head = head.slice(0, -1);
  return `${head}\u2026${tail}`;
}

/** Inserts an APP1 Exif segment (after SOI and a JFIF APP0, where one is). */
export function insertJpegExif(jpeg: Buffer, tiff: Buffer): Buffer {
  if (jpeg.length < 4 || jpeg[0] !== 0xff || jpeg[1] !== 0xd8) throw new Error('not a JPEG');
  const payload = Buffer.concat([EXIF_HEADER, tiff]);
  if (payload.length > MAX_JPEG_SEGMENT) {
    throw new OnestepError(
      `The image parameters (${payload.length} bytes of EXIF) do not fit in a JPEG's 64 KiB EXIF segment.`,
      'Use --format png for very long prompts.',
    );
  }
  const segment = Buffer.alloc(4);
  segment.writeUInt16BE(0xffe1, 0);
  segment.writeUInt16BE(payload.length + 2, 2);
  let at = 2;
  if (jpeg[2] === 0xff && jpeg[3] === 0xe0) at = 4 + jpeg.readUInt16BE(4);
  return Buffer.concat([jpeg.subarray(0, at), segment, payload, jpeg.subarray(at)]);
}

function riffChunk(fourcc: string, payload: Buffer): Buffer {
  const padded = payload.length + (payload.length & 1);
  const chunk = Buffer.alloc(8 + padded);
  chunk.write(fourcc, 0, 'latin1');
  chunk.writeUInt32LE(payload.length, 4);
  payload.copy(chunk, 8);
  return chunk;
}

/**
 * Adds an EXIF chunk (the TIFF block, no "Exif\0\0" prefix, as the WebP container spec says) to a WebP. A simple
 * (VP8/VP8L-only) file is turned into the extended format: a VP8X chunk with the EXIF flag comes first.
 */
export function insertWebpExif(webp: Buffer, tiff: Buffer, width: number, height: number): Buffer {
  if (webp.length < 20 || webp.toString('latin1', 0, 4) !== 'RIFF' || webp.toString('latin1', 8, 12) !== 'WEBP') {
    throw new Error('not a WebP');
  }
  const chunks: { fourcc: string; payload: Buffer }[] = [];
  let offset = 12;
  while (offset + 8 <= webp.length) {
    const fourcc = webp.toString('latin1', offset, offset + 4);
    const size = webp.readUInt32LE(offset + 4);
    chunks.push({ fourcc, payload: webp.subarray(offset + 8, offset + 8 + size) });
    offset += 8 + size + (size & 1);
  }
  const EXIF_FLAG = 0x08;
  const ALPHA_FLAG = 0x10;
  if (chunks[0]?.fourcc === 'VP8X') {
    const vp8x = Buffer.from(chunks[0].payload);
    vp8x[0] |= EXIF_FLAG;
    chunks[0] = { fourcc: 'VP8X', payload: vp8x };
  } else {
    const vp8x = Buffer.alloc(10);
    let flags = EXIF_FLAG;
    const image = chunks.find((c) => c.fourcc === 'VP8L');
    // VP8L header: signature byte, then 14+14 bits of size, then the alpha_is_used bit (bit 28 of the LE word).
    if (image && image.payload.length >= 5 && (image.payload.readUInt32LE(1) >>> 28) & 1) flags |= ALPHA_FLAG;
    vp8x[0] = flags;
    vp8x.writeUIntLE(width - 1, 4, 3);
    vp8x.writeUIntLE(height - 1, 7, 3);
    chunks.unshift({ fourcc: 'VP8X', payload: vp8x });
  }
  const filtered = chunks.filter((c) => c.fourcc !== 'EXIF');
  filtered.push({ fourcc: 'EXIF', payload: tiff });
  const body = Buffer.concat([Buffer.from('WEBP', 'latin1'), ...filtered.map((c) => riffChunk(c.fourcc, c.payload))]);
  const header = Buffer.alloc(8);
  header.write('RIFF', 0, 'latin1');
  header.writeUInt32LE(body.length, 4);
  return Buffer.concat([header, body]);
}

// ---- encoding ----

export interface EncodeOptions {
  format: ImageFormat;
  /** 1-100, for webp and jpeg (default 90). */
  quality?: number;
  /** The A1111 `parameters` text to embed (see formatParameters). */
  parameters?: string;
}

/** Encodes RGB uint8 pixels (HWC, row-major) with sharp and embeds `parameters` (PNG text chunk or EXIF UserComment). */
export async function encodeImage(pixels: Uint8Array, width: number, height: number, opts: EncodeOptions): Promise<Buffer> {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new OnestepError(`Cannot encode an image of ${width}x${height} pixels.`);
  }
  if (pixels.length !== width * height * 3) {
    throw new OnestepError(`An RGB image of ${width}x${height} needs ${width * height * 3} bytes, got ${pixels.length}.`);
  }
  const quality = opts.quality ?? DEFAULT_QUALITY;
  if (!Number.isInteger(quality) || quality < 1 || quality > 100) throw new OnestepError(`--quality must be 1-100, got ${quality}.`);
  const input = sharp(pixels, { raw: { width, height, channels: 3 } });
  switch (opts.format) {
    case 'png': {
      const png = await input.png({ compressionLevel: 6 }).toBuffer();
      return opts.parameters === undefined ? png : insertPngChunk(png, pngTextChunk('parameters', opts.parameters));
    }
    case 'jpeg': {
      const jpeg = await input.jpeg({ quality }).toBuffer();
      return opts.parameters === undefined ? jpeg : insertJpegExif(jpeg, exifUserComment(fitJpegParameters(opts.parameters)));
    }
    case 'webp': {
      const webp = await input.webp({ quality }).toBuffer();
      return opts.parameters === undefined ? webp : insertWebpExif(webp, exifUserComment(opts.parameters), width, height);
    }
    default:
      throw new OnestepError(`Unknown image format "${String(opts.format)}".`, `Use one of ${IMAGE_FORMATS.join(', ')}.`);
  }
}

/** Encodes and writes atomically (temp file + fsync + rename). Returns the encoded size and the encode time. */
export async function writeImage(
  path: string,
  pixels: Uint8Array,
  width: number,
  height: number,
  opts: EncodeOptions,
): Promise<{ bytes: number; encodeMs: number }> {
  const start = performance.now();
  const data = await encodeImage(pixels, width, height, opts);
  const encodeMs = performance.now() - start;
  await writeFileAtomic(path, data);
  return { bytes: data.length, encodeMs };
}
