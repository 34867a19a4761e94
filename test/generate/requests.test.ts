import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { BadInputError, OnestepError } from '../../src/errors.js';
import { checkImageSize, RequestBuilder, type RequestDefaults, type RequestModel } from '../../src/generate/requests.js';
import { InitImages } from '../../src/io/init-image.js';
import type { ImageRecord } from '../../src/plan.js';

const MODEL: RequestModel = { defaultSize: { width: 64, height: 48 }, downscale: 8, channels: 4, guidance: 1.5, trainTimesteps: 1000 };
const record = (index: number, fields: Partial<ImageRecord> = {}): ImageRecord => ({ index, promptIndex: index, line: index + 1, prompt: `prompt ${index}`, ...fields });

async function builder(defaults: Partial<RequestDefaults> = {}, initImage?: string): Promise<RequestBuilder> {
  return new RequestBuilder({ seed: 100n, ...defaults }, MODEL, await InitImages.open(initImage, undefined));
}

describe('generate/requests', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-requests-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a line overrides the flags, which override the model: size, guidance, negative prompt; seed base + index', async () => {
    const plain = (await (await builder()).request(record(3))).req;
    assert.deepEqual(plain, { index: 3, prompt: 'prompt 3', negativePrompt: undefined, seed: 103n, width: 64, height: 48, guidance: 1.5 });
    const flags = await builder({ width: 32, height: 16, guidance: 2, negativePrompt: 'blur' });
    assert.deepEqual((await flags.request(record(0))).req, { index: 0, prompt: 'prompt 0', negativePrompt: 'blur', seed: 100n, width: 32, height: 16, guidance: 2 });
    const line = (await flags.request(record(1, { width: 8, height: 24, guidance: 0, negativePrompt: '', seed: 7n }))).req;
    assert.deepEqual([line.width, line.height, line.guidance, line.negativePrompt, line.seed], [8, 24, 0, '', 7n]);
  });

  it('a size that is not a multiple of the latent downscale is one error naming the prompt', async () => {
    await assert.rejects((await builder()).request(record(2, { width: 60 })), (e: unknown) => e instanceof OnestepError && /prompt 2 \(line 3\): 60x48 is not a multiple of 8/.test(e.message));
    assert.throws(() => checkImageSize(64, 0), OnestepError);
    checkImageSize(64, undefined);
  });

  it("SDXL time ids only when the line gives some, the image's size and crop (0, 0) filling the rest", async () => {
    const b = await builder();
    assert.equal((await b.request(record(0))).req.timeIds, undefined);
    assert.deepEqual((await b.request(record(0, { cropsCoordsTopLeft: [4, 8] }))).req.timeIds, [48, 64, 4, 8, 48, 64]);
    assert.deepEqual((await b.request(record(0, { originalSize: [1024, 768], targetSize: [512, 512] }))).req.timeIds, [1024, 768, 0, 0, 512, 512]);
  });

  it('--latents: row i is the noise of prompt i; too few rows or the wrong shape name the file', async () => {
    const shape = [3, 4, 6, 8];
    const data = Float32Array.from({ length: 3 * 4 * 6 * 8 }, (_, i) => i);
    const b = await builder({ latents: { shape, data }, latentsFile: 'noise.safetensors' });
    assert.deepEqual([...(await b.request(record(2))).req.latents!], [...data.slice(2 * 192, 3 * 192)]);
    await assert.rejects(b.request(record(3)), (e: unknown) => e instanceof BadInputError && /noise\.safetensors.*holds noise for 3 prompts; prompt 3/.test(e.message));
    await assert.rejects(b.request(record(0, { width: 32 })), (e: unknown) => e instanceof BadInputError && /rows are \[4, 6, 8\].*needs \[4, 6, 4\]/.test(e.message));
  });

  it("image-to-image: the init image's size floored to the downscale, its sha256, the strength and diffusers' timestep; pixels once it will run", async () => {
    const file = path.join(dir, 'init.png');
    await sharp(Buffer.alloc(20 * 35 * 3, 200), { raw: { width: 20, height: 35, channels: 3 } }).png().toFile(file);
    const b = await builder({ strength: 0.25 }, file);
    const { req, init } = await b.request(record(0));
    assert.deepEqual([req.width, req.height], [16, 32]);
    assert.equal(init?.record.initImage, createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
    // diffusers: int(1000 * strength) steps of the schedule, the first of them: t = 1000 - (1000 - 250) - 1 = 249.
    assert.deepEqual([init?.record.strength, init?.record.timestep], [0.25, 249]);
    const pixelsBefore = req.init;
    assert.equal(pixelsBefore, undefined, 'no pixels read yet');
    await b.withInitImage(req, init);
    assert.equal(req.init?.image.length, 3 * 16 * 32);
    assert.equal(req.init?.strength, 0.25);
    assert.equal((await b.request(record(1, { strength: 0.5 }))).init?.record.timestep, 499);
    assert.equal((await (await builder()).request(record(0))).init, undefined);
  });
});
