import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as zlib from 'node:zlib';
import sharp from 'sharp';
import { OnestepError } from '../../src/errors.js';
import {
  crc32,
  encodeImage,
  exifUserComment as buildUserComment,
  formatParameters,
  insertJpegExif,
  writeImage,
  type GenerationParameters,
} from '../../src/io/images.js';

// --- small independent readers, written for the test ---

function pngChunks(png: Buffer): { type: string; data: Buffer }[] {
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const chunks = [];
  let pos = 8;
  while (pos < png.length) {
    const length = png.readUInt32BE(pos);
    const typeAndData = png.subarray(pos + 4, pos + 8 + length);
    const crc = png.readUInt32BE(pos + 8 + length);
    assert.equal(crc, zlib.crc32(typeAndData), 'chunk CRC (checked with zlib)');
    chunks.push({ type: typeAndData.subarray(0, 4).toString('latin1'), data: Buffer.from(typeAndData.subarray(4)) });
    pos += 12 + length;
  }
  assert.equal(pos, png.length);
  return chunks;
}

function pngText(chunk: { type: string; data: Buffer }): { keyword: string; text: string } {
  const nul = chunk.data.indexOf(0);
  const keyword = chunk.data.subarray(0, nul).toString('latin1');
  if (chunk.type === 'tEXt') return { keyword, text: chunk.data.subarray(nul + 1).toString('latin1') };
  assert.equal(chunk.type, 'iTXt');
  const compressed = chunk.data[nul + 1];
  let rest = chunk.data.subarray(nul + 3);
  rest = rest.subarray(rest.indexOf(0) + 1); // language tag
  rest = rest.subarray(rest.indexOf(0) + 1); // translated keyword
  return { keyword, text: (compressed ? zlib.inflateSync(rest) : rest).toString('utf8') };
}

/** Reads UserComment from an EXIF block (with or without the "Exif\0\0" header), either byte order. */
function exifUserComment(exif: Buffer): string {
  const tiff = exif.subarray(0, 6).toString('latin1') === 'Exif\0\0' ? exif.subarray(6) : exif;
  const le = tiff.subarray(0, 2).toString('latin1') === 'II';
  const u16 = (o: number) => (le ? tiff.readUInt16LE(o) : tiff.readUInt16BE(o));
  const u32 = (o: number) => (le ? tiff.readUInt32LE(o) : tiff.readUInt32BE(o));
  assert.equal(u16(2), 42);
  const entries = (ifd: number) =>
    Array.from({ length: u16(ifd) }, (_, i) => {
      const at = ifd + 2 + 12 * i;
      return { tag: u16(at), type: u16(at + 2), count: u32(at + 4), value: u32(at + 8) };
    });
  const pointer = entries(u32(4)).find((e) => e.tag === 0x8769);
  assert.ok(pointer, 'IFD0 points to the Exif IFD');
  const comment = entries(pointer.value).find((e) => e.tag === 0x9286);
  assert.ok(comment, 'Exif IFD has UserComment');
  assert.equal(comment.type, 7);
  const bytes = tiff.subarray(comment.value, comment.value + comment.count);
  assert.equal(bytes.subarray(0, 8).toString('latin1'), 'UNICODE\0');
  return new TextDecoder('utf-16be').decode(bytes.subarray(8));
}

function testImage(width: number, height: number): Uint8Array {
  const px = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      px[i] = (x * 255) / (width - 1);
      px[i + 1] = (y * 255) / (height - 1);
      px[i + 2] = (x * 7 + y * 13) & 255; // some high-frequency detail too
    }
  }
  return px;
}

const params: GenerationParameters = {
  prompt: 'a photo of a cat, best quality',
  negativePrompt: 'blurry',
  guidance: 0,
  seed: 18446744073709551615n,
  width: 64,
  height: 48,
  modelHash: '0123456789abcdef0123',
  modelName: 'sd-turbo',
  version: '0.1.0',
};

describe('io/images', () => {
  it('formats A1111 parameters text', () => {
    assert.equal(
      formatParameters(params),
      'a photo of a cat, best quality\nNegative prompt: blurry\n' +
        'Steps: 1, Sampler: onestep, CFG scale: 0.0, Seed: 18446744073709551615, Size: 64x48, Model hash: 0123456789, Model: sd-turbo, Version: onestep 0.1.0',
    );
    assert.equal(
      formatParameters({ ...params, negativePrompt: undefined, guidance: 1.5, modelName: 'my, model: v2' }),
      'a photo of a cat, best quality\n' +
        'Steps: 1, Sampler: onestep, CFG scale: 1.5, Seed: 18446744073709551615, Size: 64x48, Model hash: 0123456789, Model: "my, model: v2", Version: onestep 0.1.0',
    );
  });

  it('crc32 matches zlib', () => {
    const data = Buffer.from(Array.from({ length: 10000 }, (_, i) => (i * 2654435761) >>> 24));
    assert.equal(crc32(data), zlib.crc32(data));
    assert.equal(crc32(Buffer.from('IEND', 'latin1')), 0xae426082);
  });

  it('PNG: pixels round-trip exactly; parameters are a tEXt chunk before IDAT, iTXt when not ASCII', async () => {
    const w = 64;
    const h = 48;
    const px = testImage(w, h);
    for (const [prompt, type] of [
      ['a cat, plain ASCII', 'tEXt'],
      ['a café, naïve style', 'iTXt'],
      ['a cat 猫 🐱', 'iTXt'],
    ] as const) {
      const text = formatParameters({ ...params, prompt });
      const png = await encodeImage(px, w, h, { format: 'png', parameters: text });
      const chunks = pngChunks(png);
      assert.equal(chunks[0].type, 'IHDR');
      assert.equal(chunks.at(-1)!.type, 'IEND');
      const ours = chunks.filter((c) => c.type === 'tEXt' || c.type === 'iTXt').map(pngText).filter((t) => t.keyword === 'parameters');
      assert.equal(ours.length, 1);
      assert.equal(ours[0].text, text);
      const textAt = chunks.findIndex((c) => c.type === type);
      assert.ok(textAt > 0 && textAt < chunks.findIndex((c) => c.type === 'IDAT'), 'text before the image data, where PIL reads it');

      const decoded = await sharp(png).raw().toBuffer({ resolveWithObject: true });
      assert.deepEqual([decoded.info.width, decoded.info.height, decoded.info.channels], [w, h, 3]);
      assert.ok(Buffer.from(px).equals(decoded.data), 'PNG pixels are exact');
      const meta = await sharp(png).metadata();
      assert.ok(meta.comments?.some((c) => c.keyword === 'parameters' && c.text === text), 'libvips reads it too');
    }
  });

  for (const format of ['jpeg', 'webp'] as const) {
    it(`${format.toUpperCase()}: parameters are EXIF UserComment (UNICODE + UTF-16) that sharp exposes; pixels close`, async () => {
      const w = 64;
      const h = 48;
      const px = testImage(w, h);
      const text = formatParameters({ ...params, prompt: 'a cat 猫 🐱, "quoted", ünïcode' });
      const buf = await encodeImage(px, w, h, { format, quality: 95, parameters: text });
      const meta = await sharp(buf).metadata();
      assert.equal(meta.format, format);
      assert.deepEqual([meta.width, meta.height], [w, h]);
      assert.ok(meta.exif, 'sharp exposes the EXIF block');
      assert.equal(exifUserComment(meta.exif), text);

      const decoded = await sharp(buf).raw().toBuffer();
      const plain = await sharp(await encodeImage(px, w, h, { format, quality: 95 })).raw().toBuffer();
      assert.ok(decoded.equals(plain), 'adding metadata does not change the decoded pixels');
      let err = 0;
      for (let i = 0; i < px.length; i++) err += Math.abs(decoded[i] - px[i]);
      assert.ok(err / px.length < 6, `mean abs error ${err / px.length}`);
    });
  }

  it('rejects wrong sizes with an OnestepError; a JPEG EXIF over 64 KiB gets its prompt cut, keeping the settings line', async () => {
    await assert.rejects(encodeImage(new Uint8Array(10), 4, 4, { format: 'png' }), OnestepError);
    await assert.rejects(encodeImage(testImage(8, 8), 8, 8, { format: 'jpeg', quality: 0 }), OnestepError);
    assert.throws(() => insertJpegExif(Buffer.from([0xff, 0xd8, 0xff, 0xd9]), buildUserComment('x'.repeat(40000))), (err: unknown) => err instanceof OnestepError && /64 KiB/.test(err.message));
    const settings = 'Steps: 1, Sampler: Euler, CFG scale: 0, Seed: 5, Size: 8x8';
    for (const prompt of ['x'.repeat(40000), '\u{1F600}'.repeat(70000)]) {
      const jpeg = await encodeImage(testImage(8, 8), 8, 8, { format: 'jpeg', parameters: `${prompt}\n${settings}` });
      const text = exifUserComment((await sharp(jpeg).metadata()).exif!);
      assert.ok(text.endsWith(`\u2026\n${settings}`), text.slice(-80));
      assert.ok(prompt.startsWith(text.slice(0, text.length - settings.length - 2)));
      assert.ok(text.length > 30000);
    }
    const png = await encodeImage(testImage(8, 8), 8, 8, { format: 'png', parameters: 'x'.repeat(40000) });
    assert.equal(pngText(pngChunks(png).find((c) => c.type === 'tEXt')!).text.length, 40000);
  });

  it('writeImage writes atomically and reports the size', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onestep-images-'));
    try {
      const path = join(dir, '000000-1.webp');
      const { bytes, encodeMs } = await writeImage(path, testImage(32, 16), 32, 16, { format: 'webp', parameters: 'p' });
      const file = await readFile(path);
      assert.equal(file.length, bytes);
      assert.ok(encodeMs >= 0);
      assert.equal(exifUserComment((await sharp(file).metadata()).exif!), 'p');
      assert.deepEqual(await readdir(dir), ['000000-1.webp']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
